"""A month of billing for a GPU fleet, end to end: Kiln vs the raw PromQL it would otherwise need.

    python -m benchmarks.billing [--nodes 1000 --tenants 200 | --quick] [--days 30] [--repeat 1] [--out-dir DIR]
                                 [--attribution-share 0.1]

The fleet and its allocation history come from the same seeded generator as the dcgm_query
benchmark (tests/peers/gpu_history.py): NODES × 8 NVIDIA H100 over DAYS at 5-minute steps,
each GPU's pods in TENANTS namespaces `tenant-NNN`. Set-up (not timed): the history is
backfilled into blocks (cached under ~/.cache/kiln/prometheus-blocks/) and served by the real
Prometheus 2.42 (tests/peers/prometheus.sh); a fresh SQLite Kiln database is migrated and
given what the collectors would have stored — the tenants, nodes and GPUs, one
`k8s_allocation` row per pod and GPU (the same schedule the exporter series carry) — and
price cards.

Timed, in a separate process so its peak RSS is Kiln's alone (after imports):

- **Kiln**: `kiln bills run` for the period (hourly usage records per tenant from the
  allocation intervals, rating with price cards, idle capacity shared over tenants, one draft
  bill per tenant), then the FOCUS 1.2 export as CSV and as Parquet and the chargeback CSV.
- **Baseline**: the raw PromQL the same hourly per-tenant GPU-hours need from Prometheus —
  one range query (step 1 h over the window) of `sum by (namespace)(count_over_time(
  DCGM_FI_DEV_GPU_UTIL{namespace!=""}[1h]))`, a plain HTTP GET with `requests`, JSON decoded.

Attribution (`--attribution-share`, 0 to skip): a copy of the database gets MIG pods,
time-sliced pods, metered energy and carbon intensity on that share of the nodes
(`benchmarks/attribution_seed.py`), and the same Kiln run is timed on it too, right after the
plain one in every repeat: `attribution_added_s` is the median difference, i.e. what MIG/shared
GPU splitting, energy attribution and the FOCUS energy/carbon columns cost; its energy invariants
are checked (`attribution_checks`).

Both answers are checked hour by hour against the generator's schedule (`exact`: every
tenant-hour's GPU-hours in Kiln's usage records, to the 6th decimal place Kiln stores, and every
tenant-hour's sample count in Prometheus' answer), and the bills against the export (FOCUS
BilledCost sums to the bills' totals). One JSON line on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_SH = REPO / "tests" / "peers" / "prometheus.sh"
TARGET_RATIO = 1.5
TARGET_SECONDS = 60
GPUS_PER_NODE = 8
STEPS_PER_HOUR = 12
GPU_PRICE, CPU_PRICE = Decimal("2.35"), Decimal("0.04")


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[billing] {message}", file=sys.stderr, flush=True)


# -- set-up (not timed) --------------------------------------------------------------------------


def fill_database(url: str, gpus: list, spec) -> tuple[int, str]:
    """Migrate a fresh database and store what the collectors would have: (allocation rows, period)."""
    from sqlalchemy import insert
    from sqlmodel import Session

    from collectors.models import K8sAllocation
    from fleet.models import Gpu, Node
    from kiln.auth import Principal
    from kiln.db import create_db_engine
    from kiln.models import Tenant
    from kiln.schema import upgrade
    from metering.price_cards import PriceCardCreate, create_card
    from tests.peers.gpu_history import NVIDIA_MODEL

    engine = create_db_engine(url)
    upgrade(engine)
    origin = datetime.fromtimestamp(spec.start, UTC)
    with engine.begin() as connection:
        connection.execute(insert(Tenant), [
            {"slug": ns, "name": ns.replace("-", " ").title(), "cost_centre": f"cc-{i % 12:02d}", "description": "",
             "created_at": origin} for i, ns in enumerate(spec.namespaces)])
        names = sorted({gpu.node for gpu in gpus})
        connection.execute(insert(Node), [
            {"name": name, "provisioner": "fake", "hardware_type": "ipmi", "bmc_driver": "ipmi",
             "bmc_address": f"ipmi://10.0.{i // 250}.{i % 250 + 1}", "resource_class": "gpu.h100", "facts": {},
             "provision_state": "active", "maintenance": False, "created_at": origin, "updated_at": origin}
            for i, name in enumerate(names)])
        ids = dict(connection.execute(Node.__table__.select().with_only_columns(Node.name, Node.id)).all())
        connection.execute(insert(Gpu), [
            {"node_id": ids[gpu.node], "index": gpu.index, "uuid": gpu.ident, "model": NVIDIA_MODEL, "vendor": "nvidia",
             "memory_mib": 81559} for gpu in gpus])
        rows = []
        for gpu in gpus:
            for n, seg in enumerate(gpu.segments):
                if seg.allocated:
                    rows.append({"namespace": seg.namespace, "tenant_slug": seg.namespace, "pod": seg.pod,
                                 "pod_uid": f"{gpu.ident}-{n}", "node_name": gpu.node, "resource": "nvidia.com/gpu",
                                 "quantity": Decimal(1), "starts_at": datetime.fromtimestamp(spec.ts(seg.start), UTC),
                                 "ends_at": datetime.fromtimestamp(spec.ts(seg.stop), UTC)})
        for chunk in range(0, len(rows), 50_000):
            connection.execute(insert(K8sAllocation), rows[chunk:chunk + 50_000])
    system = Principal.system("benchmark")
    with Session(engine) as session:
        for sku, price in ((f"gpu-hour:{NVIDIA_MODEL}", GPU_PRICE), ("cpu-core-hour", CPU_PRICE)):
            create_card(session, system, PriceCardCreate(sku=sku, unit_price=price, currency="EUR",
                                                         effective_from=datetime(2025, 1, 1, tzinfo=UTC)))
        session.commit()
    engine.dispose()
    return len(rows), f"{origin:%Y-%m}"


# -- the timed Kiln side (own process) -----------------------------------------------------------


def kiln_worker(url: str, period: str, out_dir: Path) -> None:
    """Run bills + exports once; print one JSON line with timings, peak RSS and checks."""
    from sqlmodel import Session, select

    from kiln.auth import Principal
    from kiln.db import create_db_engine
    from metering.bills import run_period
    from metering.exports import export_chargeback, export_focus
    from metering.models import Bill
    import pandas  # noqa: F401  (pyarrow loads it on first use: imported before timing, like the baseline's requests)
    import pyarrow.parquet  # noqa: F401

    engine = create_db_engine(url)
    system = Principal.system("benchmark")
    phases = {}
    began = time.perf_counter()
    with Session(engine, expire_on_commit=False) as session:
        summary = run_period(session, system, period, policy="share")
        session.commit()
        phases["bills_run"] = time.perf_counter() - began
        mark = time.perf_counter()
        focus_rows = export_focus(session, system, period, "csv", out_dir / f"focus-{period}.csv", "Benchmark AI Factory")
        phases["focus_csv"] = time.perf_counter() - mark
        mark = time.perf_counter()
        export_focus(session, system, period, "parquet", out_dir / f"focus-{period}.parquet", "Benchmark AI Factory")
        phases["focus_parquet"] = time.perf_counter() - mark
        mark = time.perf_counter()
        export_chargeback(session, system, period, out_dir / f"chargeback-{period}.csv", "Benchmark AI Factory")
        phases["chargeback"] = time.perf_counter() - mark
    kiln_s = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with Session(engine) as session:
        bill_total = sum(Decimal(t) for t in session.exec(select(Bill.total).where(Bill.period == period)).all())
    import csv

    with (out_dir / f"focus-{period}.csv").open() as stream:
        billed = sum(Decimal(row["BilledCost"]) for row in csv.DictReader(stream))
    print(json.dumps({
        "kiln_s": kiln_s, "phases_s": phases, "peak_rss_mb": round(peak, 1), "usage_rows": sum(summary.usage_rows.values()),
        "focus_rows": focus_rows, "bills": len(summary.drafts), "idle_cost": str(summary.idle_cost),
        "bill_total": str(bill_total),
        "focus_matches_bills": billed == bill_total,
    }))


# -- the baseline --------------------------------------------------------------------------------


def baseline_query(url: str, start: datetime, end: datetime) -> tuple[float, Counter]:
    """(seconds, presence samples per (namespace, hour start)) of the hourly range query, one plain HTTP GET."""
    import requests

    query = 'sum by (namespace) (count_over_time(DCGM_FI_DEV_GPU_UTIL{namespace!=""}[1h]))'
    params = {"query": query, "start": (start + timedelta(seconds=3599)).timestamp(), "end": end.timestamp(), "step": 3600}
    began = time.perf_counter()
    body = requests.get(f"{url}/api/v1/query_range", params=params, timeout=600).json()
    seconds = time.perf_counter() - began
    if body.get("status") != "success":
        raise RuntimeError(f"baseline query failed: {body}")
    counts: Counter = Counter()
    for series in body["data"]["result"]:
        for at, value in series["values"]:
            counts[(series["metric"]["namespace"], int(at) - 3599)] += int(value)
    return seconds, counts


def expected_hours(gpus: list, spec) -> Counter:
    """Presence samples per (namespace, hour start) from the generator's schedule (hours hold 12 steps)."""
    counts: Counter = Counter()
    for gpu in gpus:
        for seg in gpu.segments:
            if not seg.allocated:
                continue
            step = seg.start
            while step < seg.stop:
                hour_end = (step // STEPS_PER_HOUR + 1) * STEPS_PER_HOUR
                taken = min(seg.stop, hour_end) - step
                counts[(seg.namespace, spec.ts(step - step % STEPS_PER_HOUR))] += taken
                step += taken
    return counts


def kiln_hours(url: str) -> Counter:
    """GPU-hours per (tenant, hour start) in Kiln's usage records."""
    from sqlmodel import Session, col, select

    from kiln.db import create_db_engine
    from kiln.models import Tenant
    from metering.models import UsageRecord

    engine = create_db_engine(url)
    with Session(engine) as session:
        rows = session.exec(select(Tenant.slug, UsageRecord.hour, UsageRecord.quantity)
                            .join(Tenant, col(Tenant.id) == UsageRecord.tenant_id)
                            .where(col(UsageRecord.sku).startswith("gpu-hour:"))).all()
    engine.dispose()
    return Counter({(slug, int(hour.timestamp())): quantity for slug, hour, quantity in rows})


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="50 nodes, 40 tenants")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, help="leave the FOCUS CSV and Parquet (and chargeback CSV) here")
    parser.add_argument("--attribution-share", type=float, default=0.1,
                        help="share of nodes given MIG/time-sliced pods and metered energy in a second, timed run (0: none)")
    parser.add_argument("--kiln-worker", nargs=3, metavar=("URL", "PERIOD", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kiln_worker:
        kiln_worker(args.kiln_worker[0], args.kiln_worker[1], Path(args.kiln_worker[2]))
        return 0

    from benchmarks.dcgm_query import backfill
    from tests.peers import gpu_history as history

    nodes, tenants = (50, 40) if args.quick else (args.nodes, args.tenants)
    spec = history.FleetSpec(nodes=nodes, gpus_per_node=GPUS_PER_NODE, days=args.days, amd_nodes=0, detail_hours=0,
                             malformed=False, namespaces=history.tenant_namespaces(tenants))
    scale = f"{nodes} nodes x {GPUS_PER_NODE} GPUs, {tenants} tenants, {args.days} days"
    log(f"{scale}: backfilling (not timed)")
    blocks, backfill_s, cached = backfill(spec)
    gpus = history.build_fleet(spec)
    expected = expected_hours(gpus, spec)
    start, end = datetime.fromtimestamp(spec.start, UTC), datetime.fromtimestamp(spec.end, UTC)
    with tempfile.TemporaryDirectory(prefix="kiln-billing-bench-") as tmp:
        out_dir = args.out_dir or Path(tmp) / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "attributed").mkdir(exist_ok=True)
        url = f"sqlite:///{Path(tmp) / 'kiln.db'}"
        began = time.monotonic()
        allocations, period = fill_database(url, gpus, spec)
        log(f"database ready in {time.monotonic() - began:.1f} s: {allocations:,} allocation rows, period {period}")
        attributed_url, attribution = None, {}
        if args.attribution_share > 0:
            from benchmarks.attribution_seed import add_attribution

            shutil.copyfile(Path(tmp) / "kiln.db", Path(tmp) / "kiln-attributed.db")
            attributed_url = f"sqlite:///{Path(tmp) / 'kiln-attributed.db'}"
            attribution = add_attribution(attributed_url, spec, args.attribution_share)
            log(f"attribution copy ready: {attribution}")
        state = Path(tmp) / "prometheus"
        started = subprocess.run(["bash", str(PROMETHEUS_SH), "start", str(state), str(blocks),
                                  "--storage.tsdb.max-block-duration=1d"], capture_output=True, text=True, timeout=600)
        if started.returncode != 0:
            log(started.stderr.strip())
            return 1
        prom = started.stdout.strip().splitlines()[-1]
        try:
            baseline_query(prom, start, end)  # warm-up, not timed
            kiln_runs, base_runs, base_counts, attributed_runs = [], [], Counter(), []
            for r in range(args.repeat):
                for side in (("kiln", "baseline") if r % 2 == 0 else ("baseline", "kiln")):
                    if side == "baseline":
                        seconds, base_counts = baseline_query(prom, start, end)
                        base_runs.append(seconds)
                    else:
                        done = subprocess.run([sys.executable, "-m", "benchmarks.billing", "--kiln-worker", url, period,
                                               str(out_dir)], cwd=REPO, capture_output=True, text=True, check=True)
                        kiln_runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                        if attributed_url:
                            done = subprocess.run([sys.executable, "-m", "benchmarks.billing", "--kiln-worker", attributed_url,
                                                   period, str(out_dir / "attributed")], cwd=REPO, capture_output=True,
                                                  text=True, check=True)
                            attributed_runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                log(f"repeat {r + 1}: kiln {kiln_runs[-1]['kiln_s']:.2f} s, baseline {base_runs[-1]:.2f} s")
        finally:
            subprocess.run(["bash", str(PROMETHEUS_SH), "stop", str(state)], capture_output=True, timeout=60)
        got_hours = kiln_hours(url)
        if attributed_url:
            from benchmarks.attribution_seed import attribution_checks

            attribution.update(attribution_checks(attributed_url, period))
            attributed_s = statistics.median(r["kiln_s"] for r in attributed_runs)
            attribution.update(kiln_attributed_s=round(attributed_s, 3),
                               peak_rss_attributed_mb=attributed_runs[-1]["peak_rss_mb"],
                               focus_matches_bills=attributed_runs[-1]["focus_matches_bills"])
    kiln_s, baseline_s = statistics.median(r["kiln_s"] for r in kiln_runs), statistics.median(base_runs)
    last = kiln_runs[-1]
    want = {key: (Decimal(n) / STEPS_PER_HOUR).quantize(Decimal("0.000001")) for key, n in expected.items()}
    kiln_exact, base_exact = dict(got_hours) == want, dict(base_counts) == dict(expected)
    print(json.dumps({
        "benchmark": "billing",
        "scale": scale,
        "kiln_s": round(kiln_s, 3),
        "baseline": "raw PromQL range query: hourly GPU-hours per tenant over the month",
        "baseline_s": round(baseline_s, 3),
        "ratio": round(kiln_s / baseline_s, 3),
        "target_ratio": TARGET_RATIO,
        "target_s": TARGET_SECONDS,
        "peak_rss_mb": last["peak_rss_mb"],
        "rows_per_s": round((allocations + last["usage_rows"]) / kiln_s),
        "allocations": allocations,
        "usage_rows": last["usage_rows"],
        "focus_rows": last["focus_rows"],
        "bills": last["bills"],
        "phases_s": {k: round(v, 3) for k, v in last["phases_s"].items()},
        "exact": kiln_exact and base_exact,
        "kiln_exact": kiln_exact,
        "baseline_exact": base_exact,
        "focus_matches_bills": last["focus_matches_bills"],
        "bill_total_eur": last["bill_total"],
        "idle_cost_eur": last["idle_cost"],
        "backfill_s": round(backfill_s, 1),
        "backfill_cached": cached,
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "kiln_runs_s": [round(r["kiln_s"], 3) for r in kiln_runs],
        "baseline_runs_s": [round(t, 3) for t in base_runs],
        "out_dir": str(args.out_dir) if args.out_dir else None,
        "attribution_share": args.attribution_share,
        "attribution_added_s": round(attribution["kiln_attributed_s"] - kiln_s, 3) if attribution else None,
        "attribution": attribution or None,
    }))
    attribution_ok = not attribution or (attribution["energy_within_metered"] and attribution["energy_adds_up"]
                                         and attribution["focus_matches_bills"])
    return 0 if kiln_exact and base_exact and last["focus_matches_bills"] and attribution_ok else 1


if __name__ == "__main__":
    sys.exit(main())
