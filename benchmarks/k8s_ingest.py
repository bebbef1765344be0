"""Kubernetes ingest at scale: Kiln's collector + store vs a plain list+watch loop (issue 19, item 2).

    python -m benchmarks.k8s_ingest [--pods 100000 --namespaces 2000 --changes 10000 | --quick]
                                    [--nodes 500] [--concurrency 48] [--sqlite]

Peers, started here: the real kube-apiserver 1.20 + etcd (tests/peers/kube.sh; no kubelet or
scheduler, so the set-up plays them: pods are bound with `spec.nodeName` and their status is
written through the status subresource) and PostgreSQL (tests/peers/postgres.sh, a fresh
database per run, dropped afterwards; `--sqlite` or no PostgreSQL: a SQLite file, and the JSON
line says which).

Set-up (not timed, `setup_s`): GPU nodes, NAMESPACES namespaces labelled `kiln.io/tenant`, PODS
bound pods (every other one with 1–8 `nvidia.com/gpu`, all with CPU and memory requests) in
Running phase with a `startTime`, created by parallel HTTP requests (aiohttp) at the API
server's own pace.

Timed, each side in its own process (so `peak_rss_mb` is the side's own `ru_maxrss`):

- **Kiln**: the worker's real path — `collectors.kubernetes.build(Settings(kubeconfig=…))`,
  `single_target_source(…, persist_kubernetes)` and `collectors.cycle.run_cycle`: the first
  cycle lists (paged) and persists every allocation interval (`list_s`); then, after the
  changes, cycles watch from the listed resourceVersion and persist until the collector has
  seen the last change's version (`watch_s`, `watch_cycles`).
- **Baseline**: what a user would write with the `kubernetes` client when kube-state-metrics
  is not at hand (it is not runnable here): a paged list, then a watch from its
  resourceVersion, raw JSON, keeping per pod only what intervals need (namespace, name, node,
  start, end, summed requests) in a dict — no database. A floor, not a rival product.

Changes (between the list and the watch phases, not timed): CHANGES split into completions
(status → Succeeded with a container `finishedAt`), deletions, and new bound Running pods.

Checks: every `k8s_allocation` row against the pods as created and changed (`exact`):
(namespace, tenant, pod, node, resource, quantity, starts_at, ends_at) — completions end at
their `finishedAt`, new pods are open, deleted pods end between the delete request and the end
of the watch phase; no row missing, none extra. The baseline's view is checked the same way.
One JSON line on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.k8s_cluster import LABEL, Cluster, change, check_rows, expected_rows, log, populate

REPO = Path(__file__).resolve().parent.parent
KUBE_SH, POSTGRES_SH = REPO / "tests" / "peers" / "kube.sh", REPO / "tests" / "peers" / "postgres.sh"
TARGET_RSS_MB = 300


# -- the timed sides (own processes) -------------------------------------------------------------


def kiln_worker(kubeconfig: str, db_url: str, data_dir: str) -> None:
    """Kiln's worker path: list cycle; then (a line with the last change's version on stdin) watch cycles."""
    from collectors.cluster_store import persist_kubernetes
    from collectors.cycle import run_cycle
    from collectors.kubernetes import build
    from collectors.sources import single_target_source
    from kiln.db import create_db_engine
    from kiln.settings import Settings

    engine = create_db_engine(db_url)
    collector = build(Settings(data_dir=Path(data_dir), kubeconfig=kubeconfig, kube_tenant_label=LABEL))
    assert collector is not None
    source = single_target_source(collector, 60, persist_kubernetes)

    def cycle() -> None:
        report = run_cycle(engine, source)
        failed = [r.error for r in report.results if not r.ok]
        if failed:
            raise SystemExit(f"collection failed: {failed}")

    began, cpu = time.perf_counter(), time.process_time()
    cycle()
    list_s = time.perf_counter() - began
    print(json.dumps({"list_s": list_s, "list_cpu_s": time.process_time() - cpu, "rss_mb": rss_mb()}), flush=True)
    target = int(sys.stdin.readline())
    began, cpu, cycles = time.perf_counter(), time.process_time(), 0
    while int(collector.resource_versions["pods"] or 0) < target:
        cycle()
        cycles += 1
    watch_s, watch_cpu_s = time.perf_counter() - began, time.process_time() - cpu
    began, cpu = time.perf_counter(), time.process_time()
    cycle()  # a steady cycle: nothing changed, every interval compared with its row again
    idle = {"idle_cycle_s": time.perf_counter() - began, "idle_cycle_cpu_s": time.process_time() - cpu}
    log(f"kiln steady cycle (no changes): {idle['idle_cycle_s']:.2f} s, {idle['idle_cycle_cpu_s']:.2f} s CPU")
    print(json.dumps({"watch_s": watch_s, "watch_cpu_s": watch_cpu_s, "watch_cycles": cycles, **idle,
                      "peak_rss_mb": rss_mb(),
                      "calls": {f"{a} {k}": n for (a, k), n in collector.calls.items()}}), flush=True)
    collector.close()


def baseline_worker(kubeconfig: str) -> None:
    """A plain list+watch loop with the `kubernetes` client, keeping only what intervals need."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config
    from kubernetes.watch.watch import iter_resp_lines

    core = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=kubeconfig))
    pods: dict[str, tuple] = {}
    seen_at = datetime.now

    def keep(pod: dict[str, Any], deleted: bool = False) -> None:
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
        if not spec.get("nodeName") or not status.get("startTime"):
            return
        requests: dict[str, str] = {}
        for c in spec["containers"]:
            res = c.get("resources") or {}
            for name, value in {**(res.get("limits") or {}), **(res.get("requests") or {})}.items():
                requests[name] = value if name not in requests else str(Decimal(requests[name]) + Decimal(value))
        ends = [s["state"]["terminated"]["finishedAt"] for s in status.get("containerStatuses") or []
                if (s.get("state") or {}).get("terminated")]
        end = max(ends) if ends else (seen_at(UTC).isoformat() if deleted else None)
        pods[meta["uid"]] = (meta["namespace"], meta["name"], spec["nodeName"], status["startTime"], end, requests)

    began, cpu = time.perf_counter(), time.process_time()
    token, version = None, None
    while True:
        resp = core.list_pod_for_all_namespaces(limit=500, _continue=token, _preload_content=False)
        page = json.loads(resp.data)
        for pod in page["items"]:
            keep(pod)
        version, token = page["metadata"]["resourceVersion"], page["metadata"].get("continue")
        if not token:
            break
    list_s = time.perf_counter() - began
    print(json.dumps({"list_s": list_s, "list_cpu_s": time.process_time() - cpu, "rss_mb": rss_mb()}), flush=True)
    target = int(sys.stdin.readline())
    began, cpu, cycles = time.perf_counter(), time.process_time(), 0
    while int(version) < target:
        cycles += 1
        resp = core.list_pod_for_all_namespaces(watch=True, resource_version=version, timeout_seconds=1,
                                                allow_watch_bookmarks=True, _preload_content=False)
        for line in iter_resp_lines(resp):
            event = json.loads(line)
            if event["type"] == "ERROR":
                raise SystemExit(f"watch failed: {event['object']}")
            if event["type"] != "BOOKMARK":
                keep(event["object"], deleted=event["type"] == "DELETED")
            version = event["object"]["metadata"]["resourceVersion"]
    watch_s = time.perf_counter() - began
    print(json.dumps({"watch_s": watch_s, "watch_cpu_s": time.process_time() - cpu, "watch_cycles": cycles,
                      "peak_rss_mb": rss_mb(), "pods": {uid: list(p) for uid, p in pods.items()}}), flush=True)


def rss_mb() -> float:
    """This process's peak resident set size so far, in MB: VmHWM, not ru_maxrss, which Linux
    carries over from the parent through fork and exec (a worker would report this script's peak)."""
    status = Path("/proc/self/status").read_text()
    return round(int(status.split("VmHWM:")[1].split()[0]) / 1024, 1)


class Side:
    """A worker process driven by lines: its first JSON line after the list, its last after the watch."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.k8s_ingest", *args], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def answer(self) -> dict[str, Any]:
        """The worker's next JSON line (SystemExit if it died)."""
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise SystemExit(f"worker {self.proc.args[3:5]} exited with {self.proc.wait()}")
        return json.loads(line)

    def watch_until(self, version: str) -> dict[str, Any]:
        """Tell the worker the last change's version; its answer once it has seen it."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{version}\n")
        self.proc.stdin.flush()
        answer = self.answer()
        self.proc.wait(timeout=60)
        return answer


# -- checks --------------------------------------------------------------------------------------


def stored_rows(db_url: str) -> dict[tuple[str, str], tuple]:
    """Every `k8s_allocation` row, keyed like `expected_rows`."""
    from sqlmodel import Session, select

    from collectors.models import K8sAllocation
    from kiln.db import create_db_engine

    engine = create_db_engine(db_url)
    with Session(engine) as session:
        rows = {(r.pod_uid, r.resource): (r.namespace, r.tenant_slug, r.pod, r.node_name, r.quantity, r.starts_at,
                                          r.ends_at) for r in session.exec(select(K8sAllocation))}
    engine.dispose()
    return rows


def baseline_rows(pods: dict[str, list]) -> dict[tuple[str, str], tuple]:
    """The baseline's view as rows (quantities parsed with the client's own parse_quantity)."""
    from kubernetes.utils.quantity import parse_quantity

    rows = {}
    for uid, (namespace, name, node, start, end, requests) in pods.items():
        for resource_name, value in requests.items():
            rows[(uid, resource_name)] = (namespace, None, name, node, parse_quantity(value),
                                          datetime.fromisoformat(start), end and datetime.fromisoformat(end))
    return rows


# -- main ----------------------------------------------------------------------------------------


def start_peer(script: Path, state: Path) -> str:
    """`script start state`: the URL it printed (SystemExit with its last error line if it failed)."""
    started = subprocess.run(["bash", str(script), "start", str(state)], capture_output=True, text=True, timeout=300)
    if started.returncode != 0 or not started.stdout.strip():
        raise SystemExit(f"{script.name} start failed: {started.stderr.strip()[-2000:]}")
    return started.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--namespaces", type=int, default=2_000)
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="5,000 pods, 100 namespaces, 500 changes, 25 nodes")
    parser.add_argument("--concurrency", type=int, default=48, help="parallel set-up requests")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead of PostgreSQL")
    parser.add_argument("--kiln-worker", nargs=3, metavar=("KUBECONFIG", "DB_URL", "DATA_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--baseline-worker", metavar="KUBECONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kiln_worker:
        kiln_worker(*args.kiln_worker)
        return 0
    if args.baseline_worker:
        baseline_worker(args.baseline_worker)
        return 0
    if args.quick:
        args.pods, args.namespaces, args.changes, args.nodes = 5_000, 100, 500, 25
    scale = f"{args.pods:,} pods in {args.namespaces:,} namespaces on {args.nodes} nodes, {args.changes:,} changes"

    from benchmarks.provision import fresh_database
    from kiln.db import create_db_engine
    from kiln.schema import upgrade

    with tempfile.TemporaryDirectory(prefix="kiln-k8s-bench-") as tmp_name:
        tmp = Path(tmp_name)
        kube_state, pg_state = tmp / "kube", tmp / "postgres"
        server = None
        if not args.sqlite:
            try:
                server = start_peer(POSTGRES_SH, pg_state).replace("postgresql://", "postgresql+psycopg://", 1)
            except SystemExit as exc:
                log(f"PostgreSQL unavailable, using SQLite: {exc}")
        try:
            with fresh_database(server) as pg_url:
                db_url = pg_url or f"sqlite:///{tmp / 'kiln.db'}"
                engine = create_db_engine(db_url)
                upgrade(engine)
                engine.dispose()
                # a watch cache that holds the changes: both sides watch from their list's
                # resourceVersion, minutes old on 2 busy cores (kube-apiserver's default keeps too
                # few events and answers 410 Expired, which a watcher must answer with a re-list)
                os.environ.setdefault("KILN_KUBE_APISERVER_ARGS", f"--watch-cache-sizes=pods#{3 * args.changes + 1000}")
                url = start_peer(KUBE_SH, kube_state)
                try:
                    ca = kube_state / "ca.crt"
                    cluster = Cluster(url, (kube_state / "token").read_text().strip(), str(ca) if ca.exists() else None)
                    log(f"{scale}: creating (not timed) against {url}")
                    began = time.monotonic()
                    asyncio.run(populate(cluster, args.nodes, args.namespaces, args.pods, args.concurrency))
                    setup_s = time.monotonic() - began
                    log(f"set-up {setup_s:.1f} s ({args.pods / setup_s:.0f} pods/s); database: "
                        f"{'postgresql' if pg_url else 'sqlite'}")
                    kubeconfig = str(kube_state / "kubeconfig")
                    kiln = Side("--kiln-worker", kubeconfig, db_url, str(tmp / "data"))
                    kiln_list = kiln.answer()
                    log(f"kiln list + persist: {kiln_list['list_s']:.2f} s, rss {kiln_list['rss_mb']} MB")
                    base = Side("--baseline-worker", kubeconfig)
                    base_list = base.answer()
                    log(f"baseline list: {base_list['list_s']:.2f} s, rss {base_list['rss_mb']} MB")
                    began = time.monotonic()
                    last = asyncio.run(change(cluster, args.changes, args.concurrency))
                    changes_s = time.monotonic() - began
                    log(f"{args.changes:,} changes applied in {changes_s:.1f} s (last resourceVersion {last})")
                    kiln_watch = kiln.watch_until(last)
                    log(f"kiln watch + persist: {kiln_watch['watch_s']:.2f} s in {kiln_watch['watch_cycles']} cycles, "
                        f"peak rss {kiln_watch['peak_rss_mb']} MB")
                    base_watch = base.watch_until(last)
                    watch_end = datetime.now(UTC)
                    log(f"baseline watch: {base_watch['watch_s']:.2f} s, peak rss {base_watch['peak_rss_mb']} MB")
                finally:
                    subprocess.run(["bash", str(KUBE_SH), "stop", str(kube_state)], capture_output=True, timeout=60)
                kiln_problems = check_rows(cluster, stored_rows(db_url), watch_end)
                plain = Cluster(url, "", None, {ns: None for ns in cluster.tenant_of}, cluster.pods)
                base_problems = check_rows(plain, baseline_rows(base_watch["pods"]), watch_end)
        finally:
            if server:
                subprocess.run(["bash", str(POSTGRES_SH), "stop", str(pg_state)], capture_output=True, timeout=60)
    kiln_s = kiln_list["list_s"] + kiln_watch["watch_s"]
    baseline_s = base_list["list_s"] + base_watch["watch_s"]
    for problem in kiln_problems[:10]:
        log(f"kiln: {problem}")
    for problem in base_problems[:10]:
        log(f"baseline: {problem}")
    print(json.dumps({
        "benchmark": "k8s_ingest",
        "scale": scale,
        "kiln_s": round(kiln_s, 3),
        "baseline": "kubernetes client paged list + watch, raw JSON, per-pod tuples in memory (no database)",
        "baseline_s": round(baseline_s, 3),
        "ratio": round(kiln_s / baseline_s, 3),
        "peak_rss_mb": kiln_watch["peak_rss_mb"],
        "target_rss_mb": TARGET_RSS_MB,
        "kiln_list_s": round(kiln_list["list_s"], 3),
        "kiln_watch_s": round(kiln_watch["watch_s"], 3),
        "kiln_watch_cycles": kiln_watch["watch_cycles"],
        "kiln_steady_cycle_s": round(kiln_watch["idle_cycle_s"], 3),
        "kiln_steady_cycle_cpu_s": round(kiln_watch["idle_cycle_cpu_s"], 3),
        "kiln_calls": kiln_watch["calls"],
        "baseline_list_s": round(base_list["list_s"], 3),
        "baseline_watch_s": round(base_watch["watch_s"], 3),
        "baseline_peak_rss_mb": base_watch["peak_rss_mb"],
        "kiln_cpu_s": round(kiln_list["list_cpu_s"] + kiln_watch["watch_cpu_s"], 3),
        "baseline_cpu_s": round(base_list["list_cpu_s"] + base_watch["watch_cpu_s"], 3),
        "rows": len(expected_rows(cluster)),
        "exact": not kiln_problems,
        "baseline_exact": not base_problems,
        "database": "postgresql" if server else "sqlite",
        "setup_s": round(setup_s, 1),
        "changes_s": round(changes_s, 1),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }))
    return 0 if not kiln_problems and not base_problems else 1


if __name__ == "__main__":
    sys.exit(main())
