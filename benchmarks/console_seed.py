"""A year of a GPU fleet for the console benchmark, written fast into Kiln's real tables.

Seeded and deterministic (`random.Random(seed)`): NODES nodes with 8 NVIDIA H100 each in racks
of 50, TENANTS tenants, one VDC per rack (selector `rack=`) granted to the tenants of that rack,
and leases back to back over MONTHS calendar months up to now (each 10–60 days to a random
tenant of the rack, gaps of 0–3 days, the last one open); one node in 20 is a Kubernetes node,
never leased, on which every tenant's namespace runs a pod with one GPU for 2–8 days a month,
and OpenCost's view of each namespace-month (its GPU-hours off by up to ±3 %); price cards with
a GPU price change half-way, a 10 % discount for one tenant in ten, a budget per tenant; the
last 24 h of power and temperature rollups and health snapshots for every node; GPU utilisation
for every GPU: the last 30 minutes as 5-minute samples, everything before summed per lease and day
(`lease_utilisation_day`, 40-94 % busy) as the worker's `utilisation-days` job keeps it, and
today's sums then extended over the samples by that job's own `seal`.

Everything above is bulk-inserted (executemany; the rollups by COPY on PostgreSQL, into the
history's month partitions, created first as production would have). Then metering's own
`run_period` builds the usage records and bills of every period (and `check_alerts` the budget
alerts), exactly as `kiln bills run` does; on PostgreSQL a VACUUM ANALYZE follows, as autovacuum
would.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from collections.abc import Iterable, Iterator

from sqlalchemy import Engine, insert, select, text
from sqlmodel import Session

from collectors.models import HealthSnapshot, K8sAllocation, LeaseUtilisationDay, OpenCostAllocation, Rollup5m, UtilisationSealed
from collectors.fleet_power import bucket_start
from collectors.utilisation_days import midnight, seal
from fleet.daily_hours import days_between
from fleet.models import Gpu, Node
from fleet.tenancy_models import Lease, Vdc, VdcSelector, VdcTenant
from kiln.auth import Principal
from kiln.models import Tenant
from kiln.partitions import ensure_partitions
from kiln.roles import Role
from kiln.tokens import issue_token
from kiln.users import UserCreate, create_user
from metering.bills import run_period
from metering.budgets import check_alerts
from metering.models import Budget, TenantDiscount
from metering.periods import next_period, period_bounds, period_of
from metering.price_cards import PriceCardCreate, create_card
from metering.usage_io import copies

MODEL = "NVIDIA H100 80GB HBM3"
GPUS_PER_NODE = 8
RACK_SIZE = 50
PASSWORD = "benchmark-console-password"
CHUNK = 20_000
STEP = timedelta(minutes=5)
UTILISATION_TAIL = timedelta(minutes=30)  # raw GPU utilisation samples kept before now (older: summed per lease-day)
OPENCOST_ZEROS = {name: Decimal(0) for name in ("cpu_core_hours", "ram_byte_hours", "cpu_cost", "ram_cost", "pv_cost",
                                                "network_cost", "shared_cost")}


@dataclass
class Seeded:
    """What the benchmark needs to know about the data: periods, logins, ids."""

    periods: list[str]
    member_tenant: str
    node_name: str
    node_id: int = 0
    tokens: dict[str, str] = field(default_factory=dict)
    bill_id: int = 0
    rows: dict[str, int] = field(default_factory=dict)


def _bulk(connection, table, rows: Iterable[dict]) -> int:
    """Insert the rows, CHUNK at a time (executemany); by COPY where the connection can (the rollups:
    millions of rows at 10,000 nodes, plain columns only)."""
    if copies(connection) and table.name == Rollup5m.__tablename__:
        return _copy(connection, table.name, rows)
    count, chunk = 0, []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK:
            connection.execute(insert(table), chunk)
            count, chunk = count + len(chunk), []
    if chunk:
        connection.execute(insert(table), chunk)
        count += len(chunk)
    return count


def _copy(connection, table: str, rows: Iterable[dict]) -> int:
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return 0
    columns = tuple(first)
    with connection.connection.driver_connection.cursor() as cursor, \
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        copy.write_row(tuple(first.values()))
        count = 1
        for row in rows:
            copy.write_row(tuple(row[c] for c in columns))
            count += 1
    return count


def _leases(rng: random.Random, node_ids: list[int], racks: list[int], tenants_of: dict[int, list[int]],
            vdc_of: dict[int, int], start: datetime, now: datetime) -> list[dict]:
    rows = []
    for node_id, rack in zip(node_ids, racks, strict=True):
        at = start + timedelta(hours=rng.randrange(0, 72))
        while at < now:
            length = timedelta(days=rng.randint(10, 60), hours=rng.randrange(24))
            ends = at + length
            rows.append({"tenant_id": rng.choice(tenants_of[rack]), "node_id": node_id, "vdc_id": vdc_of[rack], "starts_at": at,
                         "ends_at": None if ends >= now else ends, "created_by": "benchmark", "created_at": at, "note": ""})
            at = ends + timedelta(days=rng.randint(0, 3), hours=rng.randrange(24))
    return rows


def _kubernetes(rng: random.Random, slugs: list[str], k8s_nodes: list[str], periods: list[str], now: datetime
                ) -> tuple[list[dict], list[dict]]:
    pods, opencost = [], []
    for t, slug in enumerate(slugs):
        for period in periods:
            month_start, month_end = period_bounds(period)
            begins = month_start + timedelta(days=rng.randint(0, 18), hours=rng.randrange(24))
            ends = begins + timedelta(days=rng.randint(2, 8))
            if begins >= now:
                continue
            ends = min(ends, now)
            pods.append({"namespace": slug, "tenant_slug": slug, "pod": f"{slug}-train-{period}", "pod_uid": f"{slug}-{period}",
                         "node_name": k8s_nodes[t % len(k8s_nodes)], "resource": "nvidia.com/gpu", "quantity": Decimal(1),
                         "starts_at": begins, "ends_at": ends})
            hours = Decimal((ends - begins) // timedelta(seconds=1)) / 3600 * (1 + Decimal(rng.randint(-300, 300)) / 10_000)
            opencost.append({"namespace": slug, "window_start": month_start, "window_end": min(month_end, now.replace(minute=0)),
                             "gpu_hours": hours.quantize(Decimal("0.000001")), "total_cost": (hours * Decimal("2.30")).quantize(Decimal("0.01")),
                             "gpu_cost": (hours * Decimal("2.30")).quantize(Decimal("0.01")), **OPENCOST_ZEROS})
    return pods, opencost


def _buckets(first: datetime, now: datetime) -> list[datetime]:
    return [first + k * STEP for k in range((bucket_start(now) - first) // STEP + 1)]


def _kept_days(leases: list, start: datetime, tail: datetime) -> Iterator[dict]:
    """Each lease's utilisation summed per day before `tail`, as `collectors.utilisation_days.seal`
    would have kept it from 5-minute samples covering every GPU: 8 GPUs × the lease's time that day,
    at 40-94 % (by lease and day)."""
    for lease_id, starts_at, ends_at in leases:
        for day_start, day_end in days_between(max(starts_at, start), min(ends_at or tail, tail)):
            micros = GPUS_PER_NODE * ((day_end - day_start) // timedelta(microseconds=1))
            percent = 40 + (lease_id * 13 + day_start.toordinal() * 7) % 55
            yield {"day": day_start.date(), "lease_id": lease_id, "measured_micros": micros,
                   "used_micro_percent": micros * percent}


def _rollups(names: list[str], now: datetime, rng: random.Random) -> Iterator[dict]:
    end = bucket_start(now)
    for name in names:
        base = 2200 + rng.randrange(800)
        for step in range(288):
            bucket = end - step * STEP
            watts = base + 150 * ((step + len(name)) % 7)
            yield {"entity": name, "metric": "ipmi_dcmi_power_consumption_watts", "bucket": bucket, "count": 5,
                   "sum": 5.0 * watts, "min": watts - 40.0, "max": watts + 40.0}
            temp = 48.0 + (step % 12) + rng.random()
            yield {"entity": name, "metric": "ipmi_temperature_celsius_max", "bucket": bucket, "count": 5,
                   "sum": 5 * temp, "min": temp - 1, "max": temp}


def seed(engine: Engine, *, nodes: int, tenants: int, months: int, now: datetime, seed_value: int = 7) -> Seeded:
    """Fill a migrated, empty database with the fleet's year; returns what the benchmark looks up."""
    rng = random.Random(seed_value)
    current = period_of(now)
    periods = [current]
    while len(periods) < months + 1:
        periods.insert(0, period_of(period_bounds(periods[0])[0] - timedelta(days=1)))
    start = period_bounds(periods[0])[0]
    racks = [i // RACK_SIZE for i in range(nodes)]
    rack_count = racks[-1] + 1
    slugs = [f"tenant-{t:03d}" for t in range(tenants)]
    seeded = Seeded(periods=periods, member_tenant=slugs[7 % tenants], node_name="gpu-0000")
    with engine.begin() as connection:  # the history's months get their partitions (PostgreSQL), as in production
        ensure_partitions(connection, now, since=start)
    with engine.begin() as connection:
        seeded.rows["tenant"] = _bulk(connection, Tenant.__table__, [
            {"slug": s, "name": f"Tenant {s[-3:]}", "cost_centre": f"cc-{t % 12:02d}", "description": "", "created_at": start}
            for t, s in enumerate(slugs)])
        tenant_ids = dict(connection.execute(select(Tenant.slug, Tenant.id)).all())
        seeded.rows["node"] = _bulk(connection, Node.__table__, [
            {"name": f"gpu-{i:04d}", "provisioner": "fake", "hardware_type": "ipmi", "bmc_driver": "ipmi",
             "bmc_address": f"ipmi://10.{i // 250}.{i % 250 + 1}.1", "resource_class": "gpu.h100", "rack": f"r{racks[i]:02d}",
             "facts": {"cpu_cores": 96}, "provision_state": "active", "power_state": "power on", "maintenance": False,
             "created_at": start - timedelta(days=1), "updated_at": start} for i in range(nodes)])
        node_ids = dict(connection.execute(select(Node.name, Node.id)).all())
        names = sorted(node_ids)
        seeded.node_id = node_ids[seeded.node_name]
        seeded.rows["gpu"] = _bulk(connection, Gpu.__table__, [
            {"node_id": node_ids[n], "index": g, "uuid": f"GPU-{n}-{g}", "model": MODEL, "vendor": "nvidia", "memory_mib": 81559}
            for n in names for g in range(GPUS_PER_NODE)])
        _bulk(connection, Vdc.__table__, [{"name": f"rack-{r:02d}", "description": f"rack r{r:02d}", "max_gpus": 400,
                                           "created_at": start} for r in range(rack_count)])
        vdc_of = {int(name[5:]): vdc_id for name, vdc_id in connection.execute(select(Vdc.name, Vdc.id)).all()}
        _bulk(connection, VdcSelector.__table__, [{"vdc_id": vdc_of[r], "kind": "rack", "value": f"r{r:02d}"} for r in range(rack_count)])
        tenants_of = {r: [tenant_ids[s] for t, s in enumerate(slugs) if t % rack_count == r] or [tenant_ids[slugs[r % tenants]]]
                      for r in range(rack_count)}
        _bulk(connection, VdcTenant.__table__, [{"vdc_id": vdc_of[r], "tenant_id": t, "max_gpus": 160}
                                                for r in range(rack_count) for t in sorted(set(tenants_of[r]))])
        k8s = [n for i, n in enumerate(names) if i % 20 == 19]
        leased = [(node_ids[n], racks[i]) for i, n in enumerate(names) if n not in set(k8s)]
        seeded.rows["lease"] = _bulk(connection, Lease.__table__, _leases(
            rng, [i for i, _ in leased], [r for _, r in leased], tenants_of, vdc_of, start, now))
        pods, opencost = _kubernetes(rng, slugs, k8s, periods, now)
        seeded.rows["k8s_allocation"] = _bulk(connection, K8sAllocation.__table__, pods)
        seeded.rows["opencost_allocation"] = _bulk(connection, OpenCostAllocation.__table__, opencost)
        _bulk(connection, TenantDiscount.__table__, [{"tenant_id": tenant_ids[s], "percent": Decimal(10), "note": "",
                                                      "created_at": start} for t, s in enumerate(slugs) if t % 10 == 3])
        _bulk(connection, Budget.__table__, [{"tenant_id": tenant_ids[s], "name": f"{s} monthly", "amount": Decimal(60_000),
                                              "currency": "EUR", "thresholds": [50, 80, 100], "created_at": start} for s in slugs])
        seeded.rows["rollup_5m"] = _bulk(connection, Rollup5m.__table__, _rollups(names, now, rng))
        _bulk(connection, HealthSnapshot.__table__, [
            {"entity": n, "node_id": node_ids[n], "source": "ipmi", "metric": metric, "labels_key": "", "labels": {},
             "value": value, "unit": unit, "state": 0, "observed_at": now}
            for n in names for metric, value, unit in (("ipmi_dcmi_power_consumption_watts", 2400.0, "watts"),
                                                       ("ipmi_temperature_celsius", 55.0, "celsius"))])
        tail = bucket_start(now) - UTILISATION_TAIL
        gpus = [f"GPU-{n}-{g}" for n in names for g in range(GPUS_PER_NODE)]
        seeded.rows["rollup_5m"] += _bulk(connection, Rollup5m.__table__, (
            {"entity": u, "metric": "gpu_util_percent", "bucket": b, "count": 5, "sum": 5.0 * (40 + (i * 7 + k) % 55),
             "min": 30.0, "max": 99.0} for i, u in enumerate(gpus) for k, b in enumerate(_buckets(tail, now))))
        leases = connection.execute(select(Lease.id, Lease.starts_at, Lease.ends_at)).all()
        seeded.rows["lease_utilisation_day"] = _bulk(connection, LeaseUtilisationDay.__table__, _kept_days(leases, start, tail))
        _bulk(connection, UtilisationSealed.__table__, [
            {"day": day, "through": min(midnight(day) + timedelta(days=1), tail)}
            for day in (start.date() + timedelta(days=d) for d in range((tail - start).days + 1))])
    with Session(engine) as session:  # today's sums from the tail's samples, as the worker's job adds them
        began = time.perf_counter()
        seal(session, now)
        session.commit()
        seeded.rows["seal_tail_ms"] = round((time.perf_counter() - began) * 1000)
    system = Principal.system("benchmark")
    with Session(engine, expire_on_commit=False) as session:
        for sku, price, begins, ends in (("node-hour:gpu.h100", "1.20", start - timedelta(days=30), None),
                                         (f"gpu-hour:{MODEL}", "2.35", start - timedelta(days=30), start + timedelta(days=182)),
                                         (f"gpu-hour:{MODEL}", "2.10", start + timedelta(days=182), None)):
            create_card(session, system, PriceCardCreate(sku=sku, unit_price=price, currency="EUR", effective_from=begins,
                                                         effective_to=ends))
        for username, role, tenants_ in (("admin", Role.INFRA_ADMIN, []), ("finance", Role.FINANCE, []),
                                         ("member", Role.TENANT_MEMBER, [seeded.member_tenant])):
            user = create_user(session, system, UserCreate(username=username, role=role, tenants=tenants_, password=PASSWORD))
            seeded.tokens[username] = issue_token(session, system, user, days=45).token  # the data set is cached for its month
        session.commit()
    return seeded


def run_bills(engine: Engine, seeded: Seeded, now: datetime, log) -> None:
    """Metering's own bills run (usage records, rating, drafts, idle cost) and budget alerts, period by period."""
    system = Principal.system("benchmark")
    seeded.rows["usage_record"] = 0
    for period in seeded.periods:
        with Session(engine, expire_on_commit=False) as session:
            summary = run_period(session, system, period, policy="platform", now=now)
            check_alerts(session, system, period, now=now)
            session.commit()
        seeded.rows["usage_record"] += sum(summary.usage_rows.values())
        log(f"bills {period}: {sum(summary.usage_rows.values()):,} usage rows, {len(summary.drafts)} bills")
    previous = seeded.periods[-2]
    with Session(engine) as session:
        from metering.models import Bill

        member = session.exec(select(Tenant.id).where(Tenant.slug == seeded.member_tenant)).scalar_one()
        seeded.bill_id = session.exec(select(Bill.id).where(Bill.tenant_id == member, Bill.period == previous)).scalar_one()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))  # what autovacuum does for a production database
    assert next_period(previous) == seeded.periods[-1]
