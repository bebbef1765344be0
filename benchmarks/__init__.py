"""Reproducible scale benchmarks: each module starts its real peers and prints one JSON line."""
