"""bmcsim: Kiln's BMC simulator for tests and benchmarks.

Each simulated BMC is a UDP port on 127.0.0.1 speaking IPMI 2.0 over LAN
(RMCP+, what ``ipmitool -I lanplus`` and python-ipmi's ``rmcpplus``
interface use), with sensors/SDR repository, DCMI 1.5 power readings, FRU
inventory, chassis power control and Get Device ID.

Modules:
    model     deterministic per-BMC data (sensors, FRU, DCMI) and the
              expected values written to bmcs.json
    protocol  the RMCP / RMCP+ server side and the IPMI command handlers
    sim       launcher (start / run / stop / fault), worker processes and
              the loopback HTTP control port
    poll      reference python-ipmi client, used for checks and benchmarks

See README.md in this directory.
"""
