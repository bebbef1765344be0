"""Simulators of what Kiln collects from, for `kiln demo`, the tests and the benchmarks.

- `collectors.sim.bmc`: IPMI 2.0 / DCMI BMCs on loopback UDP (see its README.md);
- `collectors.sim.dcgm_exporter`: an HTTP endpoint serving dcgm-exporter's text format.

They serve made-up but deterministic readings; they are peers to talk to, not mocks.
"""
