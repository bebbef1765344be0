"""Collectors: IPMI, GPU (DCGM, ROCm), Kubernetes and OpenCost samples."""
