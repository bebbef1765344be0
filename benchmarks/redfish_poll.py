"""Poll N emulated Redfish BMCs with Kiln's RedfishCollector and with a plain sushy loop.

    python -m benchmarks.redfish_poll [--bmcs 1000 | --quick] [--workers 32] [--steady 2]
                                      [--latency-ms 50] [--repeat 1] [--processes 2]

Both sides read the same BMCs in the same run: benchmarks/redfish_fleet.py, a stand-in that
serves DMTF's public-tower mockup (tests/data/upstream/redfish/public-tower) verbatim on one
loopback address per BMC, with DSP0266 sessions and `--latency-ms` per answer. Each side polls
once cold (clients and sessions created: first contact) and then `--steady` more times on its
open sessions (how it runs from then on), in its own process, with `--workers` threads. Every
BMC's readings are checked against the mockup's files (power state, watts, energy, supplies,
temperatures, fans, GPUs, log entries, firmware): `*_wrong_values`.

- Kiln: this file as a subprocess (`--kiln-worker`): one `RedfishCollector(targets,
  workers=N)` (defaults otherwise: 5 s per request, 60 s per target), `collect()` per poll;
  the cold poll's time includes setting the collector up (its HTTP clients, `kiln_setup_s`),
  as the baseline's includes creating its `sushy.Sushy` objects.
- Baseline: benchmarks/redfish_sushy.py in Ironic's peer venv (sushy 5.x): a `sushy.Sushy`
  per BMC and the same resources per poll on a thread pool of the same size. No Prometheus
  Redfish exporter can be installed here (PyPI and Debian have none; the ones in use are
  published on GitHub or as container images only), which is why.

`kiln_s` / `baseline_s` are the medians of the steady polls (over `--repeat` runs, the order
alternating K B, B K, …), `*_first_s` the cold polls'. The fleet's CPU (`fleet_cpu_s`) and
its request counts per side (`requests`) show both did the same work on the same server.
One JSON line goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.ipmi_poll import machine_busy_s, proc_cpu_s
from benchmarks.redfish_fleet import fleet_stats, running_fleet

REPO = Path(__file__).resolve().parent.parent
MOCKUP = REPO / "tests" / "data" / "upstream" / "redfish" / "public-tower"
IRONIC_SH = REPO / "tests" / "peers" / "ironic.sh"
SUSHY_LOOP = REPO / "benchmarks" / "redfish_sushy.py"
USERNAME = "admin"


def log(message: str) -> None:
    print(f"[redfish_poll {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def expected_readings(mockup: Path) -> tuple[str, dict[str, Any]]:
    """(the system's path, what a poll must read) worked out from the mockup's own files."""

    def doc(path: str) -> dict[str, Any]:
        return json.loads((mockup / path.removeprefix("/redfish/v1").strip("/") / "index.json").read_text())

    def members(path: str) -> list[dict[str, Any]]:
        return [doc(m["@odata.id"]) for m in doc(path)["Members"]]

    system_path = doc("/redfish/v1/Systems")["Members"][0]["@odata.id"]
    system = doc(system_path)
    chassis = doc(system["Links"]["Chassis"][0]["@odata.id"])
    env = doc(chassis["EnvironmentMetrics"]["@odata.id"])
    supplies = members(doc(chassis["PowerSubsystem"]["@odata.id"])["PowerSupplies"]["@odata.id"])
    metrics = [doc(s["Metrics"]["@odata.id"]) for s in supplies if "Metrics" in s]
    thermal = doc(chassis["ThermalSubsystem"]["@odata.id"])
    temperatures = doc(thermal["ThermalMetrics"]["@odata.id"])["TemperatureReadingsCelsius"]
    fans = members(thermal["Fans"]["@odata.id"])
    logs = members(system["LogServices"]["@odata.id"])
    firmware = doc(doc("/redfish/v1")["UpdateService"]["@odata.id"])["FirmwareInventory"]["@odata.id"]
    energy = (env.get("EnergykWh") or {}).get("Reading")
    return system_path, {
        "power_on": system["PowerState"] == "On",
        "watts": env["PowerWatts"]["Reading"],
        "energy_kwh": energy if energy is not None else sum(m["EnergykWh"]["Reading"] for m in metrics),
        "psus": sum(1 for m in metrics if "InputPowerWatts" in m),
        "temperatures": sum(1 for t in temperatures if t.get("Reading") is not None),
        "fans": sum(1 for f in fans if (f.get("SpeedPercent") or {}).get("Reading") is not None),
        "gpus": sum(1 for p in members(system["Processors"]["@odata.id"]) if p.get("ProcessorType") == "GPU"),
        "log_entries": sum(len(doc(s["Entries"]["@odata.id"])["Members"]) for s in logs),
        "firmware": len(doc(firmware)["Members"]),
    }


def kiln_readings(samples: list) -> dict[str, Any]:
    """The same figures as `expected_readings`, from one target's samples."""
    count = Counter(s.metric for s in samples)
    value = {s.metric: s.value for s in samples if s.metric in {
        "ipmi_chassis_power_state", "ipmi_dcmi_power_consumption_watts", "redfish_energy_kwh"}}
    return {"power_on": value.get("ipmi_chassis_power_state") == 1,
            "watts": value.get("ipmi_dcmi_power_consumption_watts"),
            "energy_kwh": value.get("redfish_energy_kwh"),
            "psus": count["redfish_psu_input_watts"], "temperatures": count["ipmi_temperature_celsius"],
            "fans": count["ipmi_fan_speed_ratio"], "gpus": count["redfish_gpu_info"],
            "log_entries": count["redfish_log_entry"], "firmware": count["redfish_firmware_info"]}


def kiln_worker() -> None:
    """Poll every target of the job on stdin with RedfishCollector; print the measurements."""
    from collectors.redfish import RedfishCollector, RedfishTarget

    job = json.load(sys.stdin)
    password = os.environ.get("REDFISH_FLEET_PASSWORD", "")
    targets = [RedfishTarget(f"bmc-{i:04d}", t["url"], job["username"], password, system=t["system"])
               for i, t in enumerate(job["targets"])]
    polls = []
    cpu0, t0 = time.process_time(), time.monotonic()
    with RedfishCollector(targets, workers=job["workers"]) as collector:  # clients set up: part of the cold poll
        setup_s = time.monotonic() - t0
        for _ in range(job["polls"]):
            results = collector.collect()
            wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
            failed = [r for r in results if not r.ok or r.error]
            wrong = sum(1 for r in results if r.ok and kiln_readings(r.samples) != job["expected"])
            polls.append({"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "errors": len(failed), "wrong": wrong,
                          "first_errors": sorted({r.error or "" for r in failed})[:3]})
            log(f"kiln poll: {wall:.2f} s wall, {cpu:.2f} s CPU, {len(failed)} failed, {wrong} wrong")
            cpu0, t0 = time.process_time(), time.monotonic()
        auth = sorted({c.auth for c in collector.clients.values()})
    print(json.dumps({"polls": polls, "auth": auth, "setup_s": round(setup_s, 3),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def run_side(name: str, cmd: list[str], job: dict, password: str, port: int, fleet_pids: list[int]) -> dict:
    """Run one side's worker on the job; its polls plus CPU of the worker, the fleet and the rest."""
    stats0 = fleet_stats(port, len(fleet_pids))
    fleet0, busy0 = sum(proc_cpu_s(p) for p in fleet_pids), machine_busy_s()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, cwd=REPO, input=json.dumps(job), stdout=subprocess.PIPE, text=True, timeout=3600,
                          env=dict(os.environ, REDFISH_FLEET_PASSWORD=password), check=False)
    if done.returncode != 0:
        sys.exit(f"redfish_poll: the {name} side failed (exit {done.returncode})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
    result["worker_cpu_s"] = round(worker_cpu, 2)
    result["fleet_cpu_s"] = round(sum(proc_cpu_s(p) for p in fleet_pids) - fleet0, 2)
    result["other_cpu_s"] = round(machine_busy_s() - busy0 - result["worker_cpu_s"] - result["fleet_cpu_s"], 2)
    stats = fleet_stats(port, len(fleet_pids))
    stats.subtract(stats0)
    result["requests"] = {k: v for k, v in sorted(stats.items()) if v}
    return result


def sushy_python() -> str:
    """Ironic's peer venv's Python (it has sushy); `ironic.sh install` first (idempotent)."""
    subprocess.run(["bash", str(IRONIC_SH), "install"], check=True, capture_output=True, text=True)
    python = Path(os.environ.get("KILN_PEERS_DIR", REPO / ".peers")) / "ironic" / "bin" / "python"
    subprocess.run([str(python), "-c", "import sushy"], check=True)
    return str(python)


def median_of(runs: list[dict], key: str, cold: bool) -> float:
    """Median over runs of the cold poll's (or the steady polls' median) `key`."""
    per_run = [r["polls"][0][key] if cold else statistics.median(p[key] for p in (r["polls"][1:] or r["polls"]))
               for r in runs]
    return round(statistics.median(per_run), 3)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.redfish_poll", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bmcs", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="50 BMCs")
    ap.add_argument("--workers", type=int, default=32, help="threads on each side (KILN_REDFISH_WORKERS' default)")
    ap.add_argument("--steady", type=int, default=2, help="steady polls after the cold one")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="the emulated BMCs' time per answer")
    ap.add_argument("--processes", type=int, default=2, help="processes serving the emulated BMCs")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side, order alternating")
    ap.add_argument("--kiln-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.kiln_worker:
        return kiln_worker()
    n = 50 if args.quick else args.bmcs
    log("installing Ironic's peer venv for sushy (idempotent)")
    python = sushy_python()
    system_path, expected = expected_readings(MOCKUP)
    password = secrets.token_urlsafe(12)
    runs: dict[str, list[dict]] = {"kiln": [], "baseline": []}
    commands = {"kiln": [sys.executable, "-m", "benchmarks.redfish_poll", "--kiln-worker"],
                "baseline": [python, str(SUSHY_LOOP)]}
    log(f"starting {n} emulated BMCs ({args.latency_ms:g} ms per answer, {args.processes} processes)")
    with running_fleet(MOCKUP, n, processes=args.processes, latency_ms=args.latency_ms, username=USERNAME,
                       password=password) as (port, addresses, pids):
        job = {"targets": [{"url": f"http://{a}:{port}", "system": system_path} for a in addresses],
               "username": USERNAME, "workers": args.workers, "polls": 1 + args.steady, "expected": expected}
        for i in range(args.repeat):
            for side in ("kiln", "baseline") if i % 2 == 0 else ("baseline", "kiln"):
                log(f"run {i + 1}: {side}")
                runs[side].append(run_side(side, commands[side], job, password, port, pids))
    kiln, base = runs["kiln"], runs["baseline"]
    kiln_s, baseline_s = median_of(kiln, "wall_s", False), median_of(base, "wall_s", False)
    kiln_first, base_first = median_of(kiln, "wall_s", True), median_of(base, "wall_s", True)
    print(json.dumps({
        "benchmark": "redfish_poll",
        "scale": n,
        "kiln_s": kiln_s,
        "baseline": f"sushy {base[0].get('sushy_version')} loop, {args.workers} threads",
        "baseline_s": baseline_s,
        "ratio": round(kiln_s / baseline_s, 4),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in kiln),
        "baseline_peak_rss_mb": max(r["peak_rss_mb"] for r in base),
        "kiln_first_s": kiln_first,
        "baseline_first_s": base_first,
        "first_ratio": round(kiln_first / base_first, 4),
        "kiln_cpu_s": median_of(kiln, "cpu_s", False),
        "baseline_cpu_s": median_of(base, "cpu_s", False),
        "kiln_first_cpu_s": median_of(kiln, "cpu_s", True),
        "baseline_first_cpu_s": median_of(base, "cpu_s", True),
        "kiln_errors": max(p["errors"] for r in kiln for p in r["polls"]),
        "kiln_wrong_values": max(p["wrong"] for r in kiln for p in r["polls"]),
        "baseline_errors": max(p["errors"] for r in base for p in r["polls"]),
        "baseline_wrong_values": max(p["wrong"] for r in base for p in r["polls"]),
        "error_samples": {side: sorted({e for r in runs[side] for p in r["polls"] for e in p["first_errors"]})[:3]
                          for side in runs},
        "expected": expected,
        "kiln_setup_s": statistics.median(r["setup_s"] for r in kiln),  # in kiln_first_s
        "kiln_auth": kiln[0]["auth"],
        "requests": {side: runs[side][0]["requests"] for side in runs},
        "fleet_cpu_s": {side: [r["fleet_cpu_s"] for r in runs[side]] for side in runs},
        "worker_cpu_s": {side: [r["worker_cpu_s"] for r in runs[side]] for side in runs},
        # CPU other processes on the machine used meanwhile: large means a disturbed run
        "other_cpu_s": {side: [r["other_cpu_s"] for r in runs[side]] for side in runs},
        "polls_s": {side: [[p["wall_s"] for p in r["polls"]] for r in runs[side]] for side in runs},
        "workers": args.workers,
        "latency_ms": args.latency_ms,
        "steady_polls": args.steady,
        "repeat": args.repeat,
        "cores": len(os.sched_getaffinity(0)),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
