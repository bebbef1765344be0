"""A month of bills for a GPU fleet on PostgreSQL, end to end: Kiln vs the floor (issue 19, item 1).

    python -m benchmarks.billing [--nodes 10000 --tenants 2000 | --quick] [--days 30] [--repeat 1]
                                 [--lease-share 0.1] [--attribution-share 0] [--database-url URL]
                                 [--out-dir DIR] [--profile FILE]

Set-up (not timed, `setup_s`): the PostgreSQL peer (tests/peers/postgres.sh; or the server of
`--database-url`) gets a fresh database, dropped afterwards, filled by `benchmarks.billing_seed`:
NODES × 8 H100 and TENANTS tenants, a month of GPU pods from the dcgm_query generator
(tests/peers/gpu_history.py, one `k8s_allocation` row per pod and GPU, as the Kubernetes
collector stores them), whole-node leases on `--lease-share` of the nodes, contract discounts
and price cards; then VACUUM ANALYZE. No cache is needed: it is rebuilt from nothing each run.

Timed, each side in its own process (after its imports; `peak_rss_mb` is the process's VmHWM):

- **Kiln**: `run_period(policy="share")`, what `kiln bills run` does (hourly usage records per
  tenant and node from the allocations and leases, rating with the price cards and discounts,
  idle capacity shared over tenants, one draft bill per tenant, all written to the database),
  then the FOCUS 1.2 export as CSV and as Parquet and the chargeback CSV.
- **Floor** (`benchmarks.billing_floor`): the same bills computed the shortest correct way
  from the same tables, independently of Kiln's code: one SQL aggregate of quantity ×
  microseconds per tenant and SKU (leases, pods less leased time), one of capacity, pricing,
  idle share and totals in Python; a CSV of the bill lines.

`--repeat` alternates the order (K F, F K, ...) and reports medians. `exact`: every tenant's
bill list total and total equal the floor's to the cent (and the same tenants have bills);
`focus_matches_bills`: the FOCUS BilledCost column adds up to the bills' totals.

Attribution (`--attribution-share`, default 0): a copy of the seeded database gets MIG pods,
time-sliced pods, metered energy and carbon intensity on that share of the nodes
(`benchmarks/attribution_seed.py`) and Kiln's run is timed on it too (no floor for it; its
energy invariants are checked, `attribution_checks`). One JSON line on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POSTGRES_SH = REPO / "tests" / "peers" / "postgres.sh"
TARGET_RATIO, TARGET_SECONDS, TARGET_RSS_MB = 2.0, 120, 1024
GPUS_PER_NODE = 8


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[billing] {message}", file=sys.stderr, flush=True)


# -- the timed sides (own processes) -------------------------------------------------------------


def kiln_worker(url: str, period: str, out_dir: Path, profile: str | None) -> None:
    """Run bills + exports once; print one JSON line with timings, peak RSS and checks."""
    import cProfile

    from sqlmodel import Session, select

    from benchmarks.k8s_ingest import rss_mb
    from benchmarks.provision import tree_cpu_seconds
    from kiln.auth import Principal
    from kiln.db import create_db_engine
    from metering.bills import run_period
    from metering.exports import export_chargeback, export_focus
    from metering.models import Bill
    import pandas  # noqa: F401  (pyarrow loads it on first use: imported before timing)
    import pyarrow.parquet  # noqa: F401

    engine = create_db_engine(url)
    system = Principal.system("benchmark")
    phases = {}
    profiler = cProfile.Profile() if profile else None
    with Session(engine, expire_on_commit=False) as session:
        backend = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()  # the run's one connection
        began, cpu, db_cpu = time.perf_counter(), time.process_time(), tree_cpu_seconds(backend)
        if profiler:
            profiler.enable()
        summary = run_period(session, system, period, policy="share")
        session.commit()
        phases["bills_run"] = time.perf_counter() - began
        for name, step in (("focus_csv", lambda: export_focus(session, system, period, "csv", out_dir / "focus.csv", "Bench")),
                           ("focus_parquet", lambda: export_focus(session, system, period, "parquet",
                                                                  out_dir / "focus.parquet", "Bench")),
                           ("chargeback", lambda: export_chargeback(session, system, period, out_dir / "chargeback.csv",
                                                                    "Bench"))):
            mark = time.perf_counter()
            phases[f"{name}_rows"] = step()
            phases[name] = time.perf_counter() - mark
        kiln_s, cpu_s, db_cpu = time.perf_counter() - began, time.process_time() - cpu, tree_cpu_seconds(backend) - db_cpu
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    with Session(engine) as session:
        from kiln.models import Tenant

        bills = {slug: (str(listed), str(total)) for slug, listed, total in session.exec(
            select(Tenant.slug, Bill.list_total, Bill.total).join(Tenant, Tenant.id == Bill.tenant_id)
            .where(Bill.period == period)).all()}
    engine.dispose()
    with (out_dir / "focus.csv").open() as stream:
        billed = sum(Decimal(row["BilledCost"]) for row in csv.DictReader(stream))
    bill_total = sum((Decimal(t) for _, t in bills.values()), Decimal(0))
    print(json.dumps({
        "kiln_s": kiln_s, "cpu_s": cpu_s, "db_cpu_s": db_cpu, "phases_s": phases, "peak_rss_mb": rss_mb(),
        "usage_rows": sum(summary.usage_rows.values()), "usage_rows_by_source": summary.usage_rows,
        "bills": bills, "idle_cost": str(summary.idle_cost), "bill_total": str(bill_total),
        "focus_matches_bills": billed == bill_total,
    }))


def floor_worker(url: str, period: str, out_dir: Path) -> None:
    """The floor once: one JSON line with its time, peak RSS and bills."""
    import psycopg

    from benchmarks.billing_floor import compute
    from benchmarks.k8s_ingest import rss_mb
    from benchmarks.provision import tree_cpu_seconds
    from metering.periods import period_bounds  # only to name the month's bounds, as the Kiln side does

    lo, hi = period_bounds(period)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        began, cpu, db_cpu = time.perf_counter(), time.process_time(), tree_cpu_seconds(backend)
        bills = compute(conn, lo, hi, out_dir / "floor-bills.csv")
        floor_s, cpu_s, db_cpu = time.perf_counter() - began, time.process_time() - cpu, tree_cpu_seconds(backend) - db_cpu
    print(json.dumps({"floor_s": floor_s, "cpu_s": cpu_s, "db_cpu_s": db_cpu, "peak_rss_mb": rss_mb(),
                      "bills": {slug: (str(a), str(b)) for slug, (a, b) in bills.items()}}))


def run_side(*args: str) -> dict:
    """This file with a hidden worker flag, in its own process: its JSON line."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.billing", *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed: {done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- databases -----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres(url: str | None, state: Path) -> Iterator[str]:
    """A PostgreSQL server URL: `url`, or the peer started for this run (stopped afterwards)."""
    if url:
        yield url
        return
    started = subprocess.run(["bash", str(POSTGRES_SH), "start", str(state)], capture_output=True, text=True, timeout=300)
    if started.returncode != 0 or not started.stdout.strip():
        raise SystemExit(f"postgres.sh start failed (install: bash {POSTGRES_SH} install): {started.stderr.strip()[-2000:]}")
    try:
        yield started.stdout.strip().splitlines()[-1].replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        subprocess.run(["bash", str(POSTGRES_SH), "stop", str(state)], capture_output=True, timeout=60)


@contextlib.contextmanager
def copy_of(url: str) -> Iterator[str]:
    """A new database on the same server, copied from `url`'s (TEMPLATE), dropped afterwards."""
    from sqlalchemy.engine import make_url

    from benchmarks.provision import fresh_database

    with fresh_database(url, template=make_url(url).database) as copy:
        yield copy


# -- main ----------------------------------------------------------------------------------------


def compare(kiln: dict[str, list[str]], floor: dict[str, list[str]]) -> list[str]:
    """Tenants whose bill (list total, total) differ between the sides, and tenants billed by one only."""
    return sorted(slug for slug in set(kiln) | set(floor)
                  if [Decimal(v) for v in kiln.get(slug, ())] != [Decimal(v) for v in floor.get(slug, ())])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="50 nodes, 40 tenants")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--lease-share", type=float, default=0.1, help="share of nodes also leased whole (0: none)")
    parser.add_argument("--attribution-share", type=float, default=0.0,
                        help="share of nodes given MIG/time-sliced pods and metered energy in a second Kiln run (0: none)")
    parser.add_argument("--database-url", help="a PostgreSQL server to create the run's database on (default: the peer)")
    parser.add_argument("--out-dir", type=Path, help="leave the FOCUS CSV/Parquet, chargeback CSV and floor's CSV here")
    parser.add_argument("--profile", help="cProfile one more Kiln run (not counted) into this file (the attributed one into FILE.attributed)")
    parser.add_argument("--kiln-worker", nargs=4, metavar=("URL", "PERIOD", "OUT_DIR", "PROFILE"), help=argparse.SUPPRESS)
    parser.add_argument("--floor-worker", nargs=3, metavar=("URL", "PERIOD", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kiln_worker:
        url, period, out, profile = args.kiln_worker
        kiln_worker(url, period, Path(out), profile or None)
        return 0
    if args.floor_worker:
        floor_worker(args.floor_worker[0], args.floor_worker[1], Path(args.floor_worker[2]))
        return 0

    from benchmarks.billing_seed import seed
    from benchmarks.provision import fresh_database
    from tests.peers import gpu_history as history

    nodes, tenants = (50, 40) if args.quick else (args.nodes, args.tenants)
    spec = history.FleetSpec(nodes=nodes, gpus_per_node=GPUS_PER_NODE, days=args.days, amd_nodes=0, detail_hours=0,
                             malformed=False, namespaces=history.tenant_namespaces(tenants))
    scale = f"{nodes:,} nodes x {GPUS_PER_NODE} GPUs, {tenants:,} tenants, {args.days} days, leases on {args.lease_share:.0%}"
    with tempfile.TemporaryDirectory(prefix="kiln-billing-bench-") as tmp, \
            postgres(args.database_url, Path(tmp) / "postgres") as server, fresh_database(server) as url:
        out_dir = args.out_dir or Path(tmp) / "out"
        (out_dir / "attributed").mkdir(parents=True, exist_ok=True)
        log(f"{scale}: seeding PostgreSQL (not timed)")
        began = time.monotonic()
        seeded = seed(url, spec, args.lease_share)
        setup_s = time.monotonic() - began
        period = seeded["period"]
        log(f"seeded in {setup_s:.1f} s: {seeded}")
        kiln_runs, floor_runs, attributed_runs, attribution = [], [], [], {}
        for r in range(args.repeat):
            for side in (("kiln", "floor") if r % 2 == 0 else ("floor", "kiln")):
                if side == "kiln":
                    kiln_runs.append(run_side("--kiln-worker", url, period, str(out_dir), ""))
                else:
                    floor_runs.append(run_side("--floor-worker", url, period, str(out_dir)))
            log(f"repeat {r + 1}: kiln {kiln_runs[-1]['kiln_s']:.2f} s, floor {floor_runs[-1]['floor_s']:.2f} s "
                f"(load {os.getloadavg()[0]:.1f})")
        if args.profile:  # one more run, not counted: cProfile slows Python down
            log(f"profiled run (not counted): {run_side('--kiln-worker', url, period, str(out_dir), args.profile)['kiln_s']:.2f} s")
        if args.attribution_share > 0:
            from benchmarks.attribution_seed import add_attribution, attribution_checks

            with copy_of(url) as attributed_url:
                attribution = add_attribution(attributed_url, spec, args.attribution_share)
                log(f"attribution copy ready: {attribution}")
                for _ in range(args.repeat):
                    attributed_runs.append(run_side("--kiln-worker", attributed_url, period, str(out_dir / "attributed"), ""))
                if args.profile:  # and the attributed run, into FILE.attributed
                    profiled = run_side("--kiln-worker", attributed_url, period, str(out_dir / "attributed"),
                                        f"{args.profile}.attributed")
                    log(f"profiled attributed run (not counted): {profiled['kiln_s']:.2f} s")
                attribution.update(attribution_checks(attributed_url, period))
    kiln_s, floor_s = statistics.median(r["kiln_s"] for r in kiln_runs), statistics.median(r["floor_s"] for r in floor_runs)
    last, floor_last = kiln_runs[-1], floor_runs[-1]
    differ = compare(last["bills"], floor_last["bills"])
    for slug in differ[:10]:
        log(f"{slug}: kiln {last['bills'].get(slug)} floor {floor_last['bills'].get(slug)} (list total, total)")
    if attributed_runs:
        attributed_s = statistics.median(r["kiln_s"] for r in attributed_runs)
        attribution.update(kiln_attributed_s=round(attributed_s, 3), attribution_added_s=round(attributed_s - kiln_s, 3),
                           peak_rss_attributed_mb=attributed_runs[-1]["peak_rss_mb"],
                           focus_matches_bills=attributed_runs[-1]["focus_matches_bills"])
    print(json.dumps({
        "benchmark": "billing",
        "scale": scale,
        "database": "postgresql",
        "kiln_s": round(kiln_s, 3),
        "baseline": "floor: one SQL aggregate of the same intervals and leases + pricing, idle share and totals in Python",
        "baseline_s": round(floor_s, 3),
        "ratio": round(kiln_s / floor_s, 3),
        "target_ratio": TARGET_RATIO,
        "target_s": TARGET_SECONDS,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in kiln_runs),
        "target_rss_mb": TARGET_RSS_MB,
        "rows": {"allocations": seeded["allocations"], "leases": seeded["leases"], "usage": last["usage_rows"],
                 "usage_by_source": last["usage_rows_by_source"], "focus": last["phases_s"]["focus_csv_rows"],
                 "bills": len(last["bills"])},
        "exact": not differ and len(last["bills"]) > 0,
        "tenants_differing": len(differ),
        "focus_matches_bills": last["focus_matches_bills"],
        "bill_total_eur": last["bill_total"],
        "idle_cost_eur": last["idle_cost"],
        "phases_s": {k: round(v, 3) for k, v in last["phases_s"].items() if not k.endswith("_rows")},
        "kiln_cpu_s": round(statistics.median(r["cpu_s"] for r in kiln_runs), 3),
        "baseline_cpu_s": round(statistics.median(r["cpu_s"] for r in floor_runs), 3),
        "kiln_db_cpu_s": round(statistics.median(r["db_cpu_s"] for r in kiln_runs), 3),
        "baseline_db_cpu_s": round(statistics.median(r["db_cpu_s"] for r in floor_runs), 3),
        "cpu_ratio": round(statistics.median(r["cpu_s"] + r["db_cpu_s"] for r in kiln_runs)
                           / statistics.median(r["cpu_s"] + r["db_cpu_s"] for r in floor_runs), 3),
        "baseline_peak_rss_mb": floor_last["peak_rss_mb"],
        "kiln_runs_s": [round(r["kiln_s"], 3) for r in kiln_runs],
        "baseline_runs_s": [round(r["floor_s"], 3) for r in floor_runs],
        "setup_s": round(setup_s, 1),
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "cloudkitty": "not run: see benchmarks/README.md (billing)",
        "attribution": attribution or None,
    }))
    attribution_ok = not attribution or (attribution["energy_within_metered"] and attribution["energy_adds_up"]
                                         and attribution["focus_matches_bills"])
    return 0 if not differ and last["focus_matches_bills"] and attribution_ok else 1


if __name__ == "__main__":
    sys.exit(main())
