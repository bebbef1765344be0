"""benchmarks/billing.py's parts on the real PostgreSQL: the seed (leases, discounts, pods on
leased nodes), and the floor (benchmarks/billing_floor.py), which must agree with Kiln's bills to
the cent on a small fleet and disagree as soon as an input differs from what Kiln billed."""

from __future__ import annotations

from decimal import Decimal

import psycopg
from sqlmodel import Session, select

from benchmarks.billing import compare
from benchmarks.billing_floor import compute
from benchmarks.billing_seed import seed
from kiln.auth import Principal
from kiln.db import create_db_engine
from kiln.models import Tenant
from metering.bills import run_period
from metering.models import Bill, BillLine
from metering.periods import period_bounds
from tests.conftest import new_postgres_database
from tests.peers import gpu_history as history


def _kiln_bills(url: str, period: str) -> tuple[dict[str, list[str]], set[str]]:
    engine = create_db_engine(url)
    with Session(engine, expire_on_commit=False) as session:
        run_period(session, Principal.system("test"), period, policy="share")
        session.commit()
        bills = {slug: [str(listed), str(total)] for slug, listed, total in session.exec(
            select(Tenant.slug, Bill.list_total, Bill.total).join(Tenant, Tenant.id == Bill.tenant_id)
            .where(Bill.period == period)).all()}
        kinds = set(session.exec(select(BillLine.kind)).all())
    engine.dispose()
    return bills, kinds


def test_floor_equals_kiln_to_the_cent_and_notices_a_changed_input(postgres_server: str, tmp_path) -> None:
    spec = history.FleetSpec(nodes=6, gpus_per_node=8, days=4, amd_nodes=0, detail_hours=0, malformed=False,
                             namespaces=history.tenant_namespaces(12))
    with new_postgres_database(postgres_server) as url:
        seeded = seed(url, spec, lease_share=0.5)
        assert seeded["leases"] == 3 and seeded["allocations"] > 0 and seeded["period"] == "2025-05"
        kiln, kinds = _kiln_bills(url, seeded["period"])
        assert {"usage", "idle-share"} <= kinds
        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(dsn) as conn:
            floor = compute(conn, *period_bounds(seeded["period"]), tmp_path / "floor.csv")
            # tenant-003 has a 12.5 % discount: its total is below its list total on both sides
            assert floor["tenant-003"][1] < floor["tenant-003"][0]
            assert len(floor) >= 8 and sum(total for _, total in floor.values()) > Decimal(1000)
            assert compare(kiln, {slug: [str(a), str(b)] for slug, (a, b) in floor.items()}) == []
            conn.execute("UPDATE price_card SET unit_price = unit_price + 0.01 WHERE sku LIKE 'node-hour:%'")
            changed = compute(conn, *period_bounds(seeded["period"]), tmp_path / "floor.csv")
            conn.rollback()
        differ = compare(kiln, {slug: [str(a), str(b)] for slug, (a, b) in changed.items()})
        assert differ and set(differ) <= set(kiln)
