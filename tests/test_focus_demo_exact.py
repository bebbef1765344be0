"""The demo's bills and FOCUS export, checked against quantities computed independently.

The demo's data (its fleet, tenants, a month of leases, some starting at :17, effective-dated
price cards with a mid-period change and a 12.5 % discount) is rebuilt on SQLite and
PostgreSQL and billed through Kiln. The expected quantities come from the lease rows alone (whole
nodes, GPU instances, and the pods on unleased nodes) —
start/end times and GPU counts, with `Fraction` arithmetic — not from Kiln's functions; the
FOCUS products and the cent totals are checked with plain `Decimal`.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.models import K8sAllocation
from fleet.models import Gpu, Node
from fleet.tenancy_models import GpuInstanceLease, Lease
from kiln.auth import Principal
from kiln.models import Tenant
from metering.exports import export_chargeback, export_focus
from metering.focus_rules import check_csv
from metering.models import Bill, BillLine
from tests.demo_helpers import seeded_demo

SYSTEM = Principal.system("focus-exact")
NOW = datetime(2026, 12, 6, 10, 5, 27, 123456, tzinfo=UTC)  # mid-hour, mid-second: open leases end here
PERIODS = {"2026-11": (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
           "2026-12": (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))}
MICROSECONDS_PER_HOUR = 3600 * 10**6


@pytest.fixture(scope="module")
def demo(migrated_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The demo's data as of NOW, with November's and December's bills run."""
    return seeded_demo(migrated_engine, tmp_path_factory.mktemp("focus-exact"), NOW, PERIODS, SYSTEM)


def to_6_places(value: Fraction) -> Decimal:
    """`value` rounded half-even to 6 decimal places (Python's round() of a Fraction is half-even)."""
    return Decimal(round(value * 10**6)).scaleb(-6)


def expected_quantities(session: Session, lines: list[tuple[BillLine, str]]) -> dict[int, Fraction]:
    """Bill line id → its exact quantity from the lease rows: Σ over the tenant's leases of the
    microseconds held inside the line's window (and before NOW) × GPUs of the line's model (1 for
    a node-hour), over 3.6e9; plus its pods' GPU-hours (`pod_gpu_hours`)."""
    gpus: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for node_id, model in session.exec(select(Gpu.node_id, Gpu.model)).all():
        gpus[node_id][model] += 1
    classes = dict(session.exec(select(Node.id, Node.resource_class)).all())
    leases = session.exec(select(Tenant.slug, Lease.node_id, Lease.starts_at, Lease.ends_at).join(
        Tenant, Tenant.id == Lease.tenant_id)).all()
    quantities = {}
    for line, slug in lines:
        kind, _, what = line.sku.partition(":")
        total = 0
        for tenant, node_id, starts_at, ends_at in leases:
            if tenant != slug:
                continue
            count = gpus[node_id].get(what, 0) if kind == "gpu-hour" else int(classes[node_id] == what)
            low, high = max(starts_at, line.window_start), min(ends_at or NOW, line.window_end, NOW)
            if count and high > low:
                total += (high - low) // timedelta(microseconds=1) * count
        quantities[line.id] = (Fraction(total, MICROSECONDS_PER_HOUR) + pod_gpu_hours(session, slug, line)
                               + instance_gpu_hours(session, slug, line))
    return quantities


def instance_gpu_hours(session: Session, slug: str, line: BillLine) -> Fraction:
    """The tenant's GPU-hours of the line's SKU from the demo's GPU instance leases: hours held
    inside the window (and before NOW) × the profile's slices of the A100's 7 (NVIDIA's table; the
    MIG node's pool never fills, so no pro rata)."""
    total = Fraction(0)
    for tenant, profile, model, starts_at, ends_at in session.exec(
            select(Tenant.slug, GpuInstanceLease.profile, Gpu.model, GpuInstanceLease.starts_at, GpuInstanceLease.ends_at)
            .join(Tenant, Tenant.id == GpuInstanceLease.tenant_id)
            .join(Gpu, (Gpu.node_id == GpuInstanceLease.node_id) & (Gpu.index == GpuInstanceLease.gpu_index))).all():
        low, high = max(starts_at, line.window_start), min(ends_at or NOW, line.window_end, NOW)
        if tenant == slug and line.sku == f"gpu-hour:{model}:{profile}" and high > low:
            total += Fraction(int(profile.split("g.")[0]), 7) * Fraction((high - low) // timedelta(microseconds=1),
                                                                          MICROSECONDS_PER_HOUR)
    return total


def pod_gpu_hours(session: Session, slug: str, line: BillLine) -> Fraction:
    """The tenant's GPU-hours of the line's SKU from the demo's Kubernetes pods (on nodes nobody
    leases), instant by instant: a MIG instance is its slices of the A100's 7 (NVIDIA's table), a
    whole GPU 7 of 7; while the pods on a node ask for more slices than its GPUs have
    (time-slicing), each gets its part of the GPUs pro rata."""
    ids = dict(session.exec(select(Node.name, Node.id)).all())
    models = {node_id: model for node_id, model in session.exec(select(Gpu.node_id, Gpu.model)).all()}
    counts = defaultdict(int)
    for node_id, _ in session.exec(select(Gpu.node_id, Gpu.id)).all():
        counts[node_id] += 1
    by_node: dict[str, list[K8sAllocation]] = defaultdict(list)
    for pod in session.exec(select(K8sAllocation)).all():
        by_node[pod.node_name].append(pod)
    total = Fraction(0)
    for node_name, pods in by_node.items():
        node_id = ids[node_name]
        assert not session.exec(select(Lease).where(Lease.node_id == node_id)).first()  # pods only on unleased nodes
        end = {pod.id: min(pod.ends_at or NOW, NOW) for pod in pods}
        slices = {pod.id: int(pod.quantity) * (int(pod.resource.split("mig-")[1].split("g.")[0]) if "mig-" in pod.resource else 7)
                  for pod in pods}
        cuts = sorted({t for pod in pods for t in (pod.starts_at, end[pod.id])})
        for t0, t1 in zip(cuts, cuts[1:]):
            active = [pod for pod in pods if pod.starts_at <= t0 and t1 <= end[pod.id]]
            demand = sum(slices[pod.id] for pod in active)
            low, high = max(t0, line.window_start), min(t1, line.window_end)
            for pod in active:
                profile = pod.resource.split("mig-")[1] if "mig-" in pod.resource else None
                sku = f"gpu-hour:{models[node_id]}" + (f":{profile}" if profile else "")
                if pod.tenant_slug != slug or sku != line.sku or high <= low:
                    continue
                share = (Fraction(slices[pod.id], 7) if demand <= 7 * counts[node_id]
                         else Fraction(slices[pod.id] * counts[node_id], demand))
                total += share * Fraction((high - low) // timedelta(microseconds=1), MICROSECONDS_PER_HOUR)
    return total


def close_to(quantity: Decimal, exact: Fraction) -> bool:
    """The stored quantity is `exact` rounded once to 6 places — or, for a line with MIG or
    time-sliced pods (whose hours Kiln rounds to a part, 1/3.6e9 GPU-hour, each), within 1e-6."""
    return quantity == to_6_places(exact) or abs(Fraction(quantity) - exact) <= Fraction(1, 10**6)


def bill_lines(session: Session, period: str) -> list[tuple[BillLine, str]]:
    """(line, tenant slug) of every bill of `period`."""
    return list(session.exec(select(BillLine, Tenant.slug).join(Bill, Bill.id == BillLine.bill_id).join(
        Tenant, Tenant.id == Bill.tenant_id).where(Bill.period == period)).all())


@pytest.mark.parametrize("period", PERIODS)
def test_bill_quantities_are_the_leases_exact_quantities_rounded_once(demo: Engine, period: str) -> None:
    with Session(demo) as session:
        lines = bill_lines(session, period)
        expected = expected_quantities(session, lines)
    assert len(lines) >= 10 and {line.kind for line, _ in lines} == {"usage"}
    assert {line.sku.partition(":")[0] for line, _ in lines} == {"gpu-hour", "node-hour"}
    for line, slug in lines:
        assert close_to(Decimal(line.quantity), expected[line.id]), (slug, line.sku, line.window_start)
    if period == "2026-11":  # a closed month: sums of :17 starts that per-hour rounding made drift
        exact = [line for line, _ in lines if expected[line.id] * 10**6 == round(expected[line.id] * 10**6)]
        assert len(exact) >= 10
        acme_h100 = sorted((line for line, slug in lines if slug == "acme" and "H100" in line.sku),
                           key=lambda line: line.window_start)
        assert acme_h100[0].window_end == datetime(2026, 11, 24, tzinfo=UTC)  # the first price ends here
        assert expected[acme_h100[0].id] == Fraction("25721.2")  # (25721.199999 before quantities were exact)
        assert Decimal(acme_h100[0].quantity) == Decimal("25721.2")


def read_export(demo: Engine, period: str, path: Path) -> list[dict[str, str]]:
    with Session(demo) as session:
        export_focus(session, SYSTEM, period, "csv", path, "Kiln Demo Cloud")
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.parametrize("period", PERIODS)
def test_focus_rows_hold_the_exact_quantities_and_products_and_reconcile_to_the_cent(
        demo: Engine, period: str, tmp_path: Path) -> None:
    rows = read_export(demo, period, tmp_path / "focus.csv")
    with Session(demo) as session:
        lines = bill_lines(session, period)
        expected = expected_quantities(session, lines)
        bills = {str(bill.id): bill for bill in session.exec(select(Bill).where(Bill.period == period)).all()}
    by_id = {str(line.id): line for line, _ in lines}
    assert len(rows) == len(lines) and all(row["ChargeClass"] == "" for row in rows)
    for row in rows:
        line = by_id[row["x_BillLineId"]]
        quantity = Decimal(row["PricingQuantity"])
        assert quantity == Decimal(row["ConsumedQuantity"]) and close_to(quantity, expected[line.id])
        # FOCUS ListCost-C-009-C, ContractedCost-C-009-C (= ListUnitPrice-C-010-C, ContractedUnitPrice-C-011-C,
        # PricingQuantity-C-009-C): exactly the products, whatever ChargeClass NULL makes the validator skip.
        assert Decimal(row["ListCost"]) == Decimal(row["ListUnitPrice"]) * quantity
        assert Decimal(row["ContractedCost"]) == Decimal(row["ContractedUnitPrice"]) * quantity
        # The invoiced amount: the line's contracted cost, half-even to the cent.
        cents = Decimal(row["ContractedCost"]).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
        assert Decimal(row["BilledCost"]) == Decimal(row["EffectiveCost"]) == cents == Decimal(line.contracted_cost)
    for bill_id, bill in bills.items():
        mine = [row for row in rows if row["x_BillId"] == bill_id]
        assert sum(Decimal(row["BilledCost"]) for row in mine) == Decimal(bill.total) != 0
        assert Decimal(bill.total) == Decimal(bill.total).quantize(Decimal("0.01"))
    assert check_csv(tmp_path / "focus.csv") == []
    # Not vacuous: most rows' exact products are not whole cents, so a rounded ContractedCost would break the rule.
    assert sum(Decimal(row["ContractedCost"]) != Decimal(row["BilledCost"]) for row in rows) >= len(rows) // 2


def test_chargeback_totals_are_the_bills_totals(demo: Engine, tmp_path: Path) -> None:
    with Session(demo) as session:
        export_chargeback(session, SYSTEM, "2026-11", tmp_path / "chargeback.csv", "Kiln Demo Cloud")
        bills = session.exec(select(Bill).where(Bill.period == "2026-11")).all()
    with (tmp_path / "chargeback.csv").open(newline="") as stream:
        (total,) = [row for row in csv.DictReader(stream) if row["line_type"] == "total"]
    assert Decimal(total["billed_cost"]) == sum(Decimal(bill.total) for bill in bills)
    assert Decimal(total["list_cost"]) == sum(Decimal(bill.list_total) for bill in bills)


def test_parquet_holds_the_same_exact_values(demo: Engine, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    rows = read_export(demo, "2026-11", tmp_path / "focus.csv")
    with Session(demo) as session:
        export_focus(session, SYSTEM, "2026-11", "parquet", tmp_path / "focus.parquet", "Kiln Demo Cloud")
    table = pq.read_table(tmp_path / "focus.parquet").to_pylist()
    assert len(table) == len(rows)
    for record, row in zip(table, rows, strict=True):
        for column in ("PricingQuantity", "ListUnitPrice", "ListCost", "ContractedUnitPrice", "ContractedCost", "BilledCost"):
            assert record[column] == Decimal(row[column]), column
        assert record["ContractedCost"] == record["ContractedUnitPrice"] * record["PricingQuantity"]
