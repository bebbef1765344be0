"""A month of per-tenant GPU-hours from dcgm-exporter history: Kiln vs the raw PromQL query.

    python -m benchmarks.dcgm_query [--nodes 1000 | --quick] [--days 30] [--tenants 40] [--repeat 3]

Backfills (once; cached by parameters under ~/.cache/kiln/prometheus-blocks/) a month of
`DCGM_FI_DEV_GPU_UTIL` for NODES × 8 NVIDIA GPUs at 5-minute steps with a seeded allocation
schedule over TENANTS namespaces, one day per promtool run (tests/peers/gpu_history.py, in a
subprocess: not timed, not in Kiln's RSS), starts the real Prometheus 2.42 on a copy of the
blocks (tests/peers/prometheus.sh, compaction kept from starting mid-run with
--storage.tsdb.max-block-duration=1d), then times, alternating the order each repeat:

- Kiln: a fresh `PrometheusClient` + `dcgm_usage(...).gpu_hours_by_namespace(start, end)`
  (window probe, query, parsing into exact Decimal GPU-hours per namespace);
- baseline: the same PromQL at the same evaluation time as one plain HTTP GET of
  /api/v1/query with `requests`, JSON decoded.

Kiln's answer is checked against the generator's schedule (`exact`). One JSON line on stdout,
progress on stderr. Only the presence metric is generated: it is all GPU-hours need.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from collectors.dcgm import dcgm_usage
from collectors.prometheus import PrometheusClient, rfc3339
from tests.peers import gpu_history as history

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_SH = REPO / "tests" / "peers" / "prometheus.sh"
TARGET_RATIO = 1.3
GPUS_PER_NODE = 8
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[dcgm_query] {message}", file=sys.stderr, flush=True)


def fleet(nodes: int, days: int, tenants: int) -> history.FleetSpec:
    """The benchmark's fleet: NVIDIA only, presence metric only, no malformed series."""
    return history.FleetSpec(nodes=nodes, gpus_per_node=GPUS_PER_NODE, days=days, amd_nodes=0, detail_hours=0,
                             malformed=False, namespaces=history.tenant_namespaces(tenants))


def backfill(spec: history.FleetSpec) -> tuple[Path, float, bool]:
    """(blocks dir, seconds, whether it was cached): the generator's CLI in a subprocess."""
    cached = (history.CACHE_ROOT / spec.cache_key() / "COMPLETE").exists()
    began = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "tests.peers.gpu_history", "--nodes", str(spec.nodes), "--gpus", str(spec.gpus_per_node),
         "--days", str(spec.days), "--amd-nodes", "0", "--detail-hours", "0", "--no-malformed",
         "--tenants", str(len(spec.namespaces))],
        cwd=REPO, check=True, stdout=subprocess.PIPE, text=True)
    blocks = Path(out.stdout.strip().splitlines()[-1])
    if blocks != history.CACHE_ROOT / spec.cache_key() / "blocks":
        raise RuntimeError(f"generator wrote {blocks}, expected the cache key {spec.cache_key()}")
    return blocks, time.monotonic() - began, cached


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a process (MiB), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="50 nodes")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    nodes = 50 if args.quick else args.nodes
    spec = fleet(nodes, args.days, args.tenants)
    scale = f"{nodes} nodes x {GPUS_PER_NODE} GPUs x {args.days} days at 5 min"
    log(f"{scale}: backfilling into {history.CACHE_ROOT / spec.cache_key()} (not timed)")
    blocks, backfill_s, cached = backfill(spec)
    log(f"blocks ready in {backfill_s:.1f} s ({'cached' if cached else 'generated'})")

    gpus = history.build_fleet(spec)
    series = sum(len(gpu.series()) for gpu in gpus)
    expected = history.expected_samples(gpus, history.NVIDIA, "namespace")
    start, end = datetime.fromtimestamp(spec.start, UTC), datetime.fromtimestamp(spec.end, UTC)
    interval = timedelta(seconds=spec.step_s)

    with tempfile.TemporaryDirectory(prefix="kiln-dcgm-bench-") as tmp:
        state = Path(tmp) / "prometheus"
        started = subprocess.run(["bash", str(PROMETHEUS_SH), "start", str(state), str(blocks),
                                  "--storage.tsdb.max-block-duration=1d"],
                                 capture_output=True, text=True, timeout=600, check=False)
        if started.returncode != 0:
            log(started.stderr.strip())
            return 1
        url = started.stdout.strip().splitlines()[-1]
        pid = int((state / "pid").read_text())
        try:
            probe = PrometheusClient(url, timeout=600)
            query, at = dcgm_usage(probe, scrape_interval=interval).namespace_hours_query(start, end)
            log(f"Prometheus at {url}; {series:,} series; warm-up query: {query}")
            began = time.monotonic()
            requests.get(f"{url}/api/v1/query", params={"query": query, "time": rfc3339(at)}, timeout=600).json()
            log(f"warm-up (not timed) {time.monotonic() - began:.2f} s")

            kiln_times: list[float] = []
            base_times: list[float] = []
            prom_cpu: dict[str, list[float]] = {"kiln": [], "baseline": []}
            exact = True

            def kiln() -> None:
                nonlocal exact
                c0, t0 = cpu_s(pid), time.perf_counter()
                result = dcgm_usage(PrometheusClient(url, timeout=600),
                                    scrape_interval=interval).gpu_hours_by_namespace(start, end)
                kiln_times.append(time.perf_counter() - t0)
                prom_cpu["kiln"].append(cpu_s(pid) - c0)
                exact = exact and result.samples == {ns: n for ns, n in expected.items() if ns is not None} \
                    and result.unattributed_samples == expected[None]

            def baseline() -> None:
                c0, t0 = cpu_s(pid), time.perf_counter()
                body = requests.get(f"{url}/api/v1/query", params={"query": query, "time": rfc3339(at)},
                                    timeout=600).json()
                base_times.append(time.perf_counter() - t0)
                prom_cpu["baseline"].append(cpu_s(pid) - c0)
                if body.get("status") != "success":
                    raise RuntimeError(f"baseline query failed: {body}")

            for r in range(args.repeat):
                for side in ((kiln, baseline) if r % 2 == 0 else (baseline, kiln)):
                    side()
                log(f"repeat {r + 1}: kiln {kiln_times[-1]:.3f} s, baseline {base_times[-1]:.3f} s")
            prometheus_rss = peak_rss_mb(pid)
        finally:
            subprocess.run(["bash", str(PROMETHEUS_SH), "stop", str(state)], capture_output=True, timeout=60,
                           check=False)

    kiln_s, baseline_s = statistics.median(kiln_times), statistics.median(base_times)
    print(json.dumps({
        "benchmark": "dcgm_query",
        "scale": scale,
        "kiln_s": round(kiln_s, 4),
        "baseline": "raw PromQL HTTP query",
        "baseline_s": round(baseline_s, 4),
        "ratio": round(kiln_s / baseline_s, 3),
        "target_ratio": TARGET_RATIO,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "exact": exact,
        "series": series,
        "samples": spec.steps * len(gpus),
        "tenants": len(spec.namespaces),
        "backfill_s": round(backfill_s, 1),
        "backfill_cached": cached,
        "prometheus_peak_rss_mb": prometheus_rss,
        # Prometheus' CPU per query: the same work on both sides even when the machine is busy
        "prometheus_cpu_s": {side: round(statistics.median(v), 2) for side, v in prom_cpu.items()},
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "kiln_runs_s": [round(t, 4) for t in kiln_times],
        "baseline_runs_s": [round(t, 4) for t in base_times],
        "query": query,
    }))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
