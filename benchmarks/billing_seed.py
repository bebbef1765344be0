"""The billing benchmark's fleet: what the collectors and admins would have stored (set-up, not timed).

Into a migrated, empty Kiln database: TENANTS tenants (`tenant-NNN`, 12 cost centres, a
contract discount on every tenth: 12.5 %, and on every 25th from the 8th: 7.333333 %), NODES
nodes of 8 NVIDIA H100 each (created when the history starts), one `k8s_allocation` row per pod
and GPU from the generator's schedule (`tests/peers/gpu_history.py`, what the Kubernetes
collector stores), and whole-node leases on a share of the nodes (`lease_share`): per leased
node one 9-day lease starting on a mid-hour minute, and a second one from day 14 that is left
open on every other node (an open lease counts up to the period's end). The generator's pods
on a leased node stay: Kiln must not charge their GPUs twice, and the floor must not either.
Price cards: GPU-hour (H100) 2.35, node-hour (gpu.h100) 1.10, CPU core-hour 0.04 EUR.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

GPU_PRICE, NODE_PRICE, CPU_PRICE = Decimal("2.35"), Decimal("1.10"), Decimal("0.04")
RESOURCE_CLASS = "gpu.h100"
CHUNK = 50_000


def discount_of(index: int) -> Decimal | None:
    """The contract discount (percent) of tenant number `index`, if it has one."""
    if index % 10 == 3:
        return Decimal("12.5")
    if index % 25 == 7:
        return Decimal("7.333333")
    return None


def lease_windows(n: int, origin: datetime, end: datetime) -> list[tuple[datetime, datetime | None]]:
    """Leased node number `n`'s leases (two in a month): [start, end or None (open)), never overlapping."""
    first = origin + timedelta(days=n % 4, hours=n % 24, minutes=17)  # ends by day 13
    second = origin + timedelta(days=14, hours=n % 5, minutes=41)
    windows = [(first, first + timedelta(days=9)), (second, None if n % 2 else min(end, second + timedelta(days=11, minutes=30)))]
    return [(a, b) for a, b in windows if a < end]  # a short history (a test's) has no room for the second


def seed(url: str, spec, lease_share: float) -> dict[str, object]:
    """Migrate the database at `url` and fill it; returns row counts and the period (YYYY-MM)."""
    from sqlalchemy import insert, text
    from sqlmodel import Session

    from collectors.models import K8sAllocation
    from fleet.models import Gpu, Node
    from fleet.tenancy_models import Lease
    from kiln.auth import Principal
    from kiln.db import create_db_engine
    from kiln.models import Tenant
    from kiln.partitions import ensure_partitions, month_start
    from kiln.schema import upgrade
    from metering.models import TenantDiscount
    from metering.price_cards import PriceCardCreate, create_card
    from tests.peers import gpu_history as history

    engine = create_db_engine(url)
    upgrade(engine)
    origin, end = datetime.fromtimestamp(spec.start, UTC), datetime.fromtimestamp(spec.end, UTC)
    with engine.begin() as connection:  # the history's months get their partitions, as they would have in production
        ensure_partitions(connection, end, since=month_start(origin))
    allocations = leases = 0
    with engine.begin() as connection:
        connection.execute(insert(Tenant), [
            {"slug": ns, "name": ns.replace("-", " ").title(), "cost_centre": f"cc-{i % 12:02d}", "description": "",
             "created_at": origin} for i, ns in enumerate(spec.namespaces)])
        tenant_ids = dict(connection.execute(Tenant.__table__.select().with_only_columns(Tenant.slug, Tenant.id)).all())
        connection.execute(insert(TenantDiscount), [
            {"tenant_id": tenant_ids[ns], "percent": discount_of(i), "note": "benchmark contract"}
            for i, ns in enumerate(spec.namespaces) if discount_of(i) is not None])
        gpus = history.build_fleet(spec)
        names = sorted({gpu.node for gpu in gpus})
        connection.execute(insert(Node), [
            {"name": name, "provisioner": "fake", "hardware_type": "ipmi", "bmc_driver": "ipmi",
             "bmc_address": f"ipmi://10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}", "resource_class": RESOURCE_CLASS,
             "facts": {}, "provision_state": "active", "maintenance": False, "created_at": origin, "updated_at": origin}
            for i, name in enumerate(names)])
        node_ids = dict(connection.execute(Node.__table__.select().with_only_columns(Node.name, Node.id)).all())
        connection.execute(insert(Gpu), [
            {"node_id": node_ids[gpu.node], "index": gpu.index, "uuid": gpu.ident, "model": history.NVIDIA_MODEL,
             "vendor": "nvidia", "memory_mib": 81559} for gpu in gpus])
        rows: list[dict] = []
        for gpu in gpus:
            for n, seg in enumerate(gpu.segments):
                if seg.allocated:
                    rows.append({"namespace": seg.namespace, "tenant_slug": seg.namespace, "pod": seg.pod,
                                 "pod_uid": f"{gpu.ident}-{n}", "node_name": gpu.node, "resource": "nvidia.com/gpu",
                                 "quantity": Decimal(1), "starts_at": datetime.fromtimestamp(spec.ts(seg.start), UTC),
                                 "ends_at": datetime.fromtimestamp(spec.ts(seg.stop), UTC)})
            if len(rows) >= CHUNK:
                connection.execute(insert(K8sAllocation), rows)
                allocations, rows = allocations + len(rows), []
        if rows:
            connection.execute(insert(K8sAllocation), rows)
            allocations += len(rows)
        del gpus, rows
        every = round(1 / lease_share) if lease_share > 0 else 0
        lease_rows = [
            {"tenant_id": tenant_ids[spec.namespaces[(n * 7 + k) % len(spec.namespaces)]], "node_id": node_ids[name],
             "vdc_id": None, "starts_at": a, "ends_at": b, "created_by": "benchmark", "created_at": origin, "note": ""}
            for n, name in enumerate(names) if every and n % every == 0
            for k, (a, b) in enumerate(lease_windows(n, origin, end))]
        if lease_rows:
            connection.execute(insert(Lease), lease_rows)
            leases = len(lease_rows)
    system = Principal.system("benchmark")
    with Session(engine) as session:
        for sku, price in ((f"gpu-hour:{history.NVIDIA_MODEL}", GPU_PRICE), (f"node-hour:{RESOURCE_CLASS}", NODE_PRICE),
                           ("cpu-core-hour", CPU_PRICE)):
            create_card(session, system, PriceCardCreate(sku=sku, unit_price=price, currency="EUR",
                                                         effective_from=datetime(2025, 1, 1, tzinfo=UTC)))
        session.commit()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))  # what autovacuum does for a production database
    engine.dispose()
    return {"allocations": allocations, "leases": leases, "period": f"{origin:%Y-%m}"}
