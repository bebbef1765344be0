"""GPU-hours per day summed in SQL (`fleet.daily_hours`) for the usage page: exact against the
per-lease Python split it replaced, on SQLite and PostgreSQL, with ragged (microsecond) lease
times, midnight and month boundaries, mixed-model nodes, GPU instance leases and tenant scope."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from sqlmodel import select

from collectors.mig_profiles import compute_fraction
from dashboards.tenancy_data import gpu_hours, total_by
from fleet.daily_hours import daily_lease_micros, days_between
from fleet.leases import count_leases, list_leases
from fleet.models import Gpu
from fleet.tenancy_models import GpuInstanceLease, Lease, Vdc
from fleet.tenancy_schemas import QuotaUse
from fleet.usage import HOURS_QUANTUM, hours_of, lease_gpu_micros
from fleet.vdcs import quota_uses
from dashboards.pages.usage import gpu_hours_by_sku
from kiln.auth import Principal, principal_for_user
from metering import skus
from metering.allocation import daily_gpu_hours
from metering.efficiency import PLACES, lease_figures
from metering.models import Bill, UsageRecord
from metering.sku_labels import label
from tests.factories import World
from tests.fleet_helpers import make_node_row, make_vdc

T0 = datetime(2026, 2, 27, 5, 17, 3, 250_001, tzinfo=UTC)  # ragged: no hour, second or millisecond boundary
NOW = datetime(2026, 3, 2, 9, 41, 12, 999_999, tzinfo=UTC)
END = datetime(2026, 3, 4, tzinfo=UTC)
US = timedelta(microseconds=1)


def _principal(world: World, name: str) -> Principal:
    return principal_for_user(world.session, world.callers[name].user)


def _fleet(world: World) -> None:
    """Tenant a: an 8-GPU node across the February/March boundary (ragged ends), a mixed node
    (2 H100 + 1 B200) open since before the range, a GPU-less node, and a 3g.40gb instance across
    midnight; tenant b: an 8-GPU node for 90 minutes and a microsecond before midnight."""
    whole = make_node_row(world, name="whole", gpus=8)
    mixed = make_node_row(world, name="mixed", gpus=2)
    world.session.add(Gpu(node_id=mixed.id, index=2, model="NVIDIA B200"))
    bare = make_node_row(world, name="bare", gpus=0)
    other = make_node_row(world, name="other", gpus=8)
    shared = make_node_row(world, name="shared", gpus=8)
    world.session.commit()
    make_vdc(world, "train", ["whole", "mixed", "bare", "other", "shared"], {"a": {}, "b": {}})
    vdc = world.session.exec(select(Vdc.id).where(Vdc.name == "train")).one()
    a, b = world.tenant("a").id, world.tenant("b").id
    for tenant, node, start, end, on in (
        (a, whole, datetime(2026, 2, 28, 21, 59, 59, 999_999, tzinfo=UTC), datetime(2026, 3, 1, 2, 0, 0, 1, tzinfo=UTC), vdc),
        (a, mixed, T0 - timedelta(days=3), None, vdc),
        (a, bare, T0 + timedelta(hours=1), T0 + timedelta(hours=30), None),
        (b, other, datetime(2026, 3, 1, 22, 30, tzinfo=UTC), datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC), vdc),
        (b, whole, datetime(2026, 3, 1, 2, 0, 0, 1, tzinfo=UTC), datetime(2026, 3, 1, 2, 0, 0, 2, tzinfo=UTC), vdc),
    ):
        world.session.add(Lease(tenant_id=tenant, node_id=node.id, vdc_id=on, starts_at=start, ends_at=end, created_by="t"))
    world.session.add(GpuInstanceLease(
        tenant_id=a, node_id=shared.id, vdc_id=vdc, gpu_index=0, profile="3g.40gb", gpu_model="NVIDIA H100 80GB HBM3",
        node_gpus=8, starts_at=datetime(2026, 3, 1, 23, 0, 0, 500, tzinfo=UTC), ends_at=datetime(2026, 3, 2, 1, tzinfo=UTC),
        created_by="t"))
    world.session.commit()


def _reference(world: World, principal: Principal, start: datetime, stop: datetime, tenant_id: int | None = None
               ) -> dict[tuple[date, int, str], Decimal]:
    """The per-lease Python split the SQL replaced: each lease cut at UTC midnights, every piece
    × its node's GPUs of each model (instances × their compute fraction), summed exactly."""
    leases = [lease for lease in world.session.exec(principal.scope(select(Lease), Lease.tenant_id)).all()
              if tenant_id in (None, lease.tenant_id)]
    out: dict[tuple[date, int, str], Decimal] = defaultdict(Decimal)
    for lease in leases:
        models: dict[str, int] = defaultdict(int)
        for model in world.session.exec(select(Gpu.model).where(Gpu.node_id == lease.node_id)).all():
            models[model] += 1
        for a, b in days_between(start, stop):
            for model, count in models.items():
                micros = lease_gpu_micros(lease, count, a, b)
                if micros:
                    out[(a.date(), lease.tenant_id, model)] += Decimal(micros) / 3_600_000_000
    for i in world.session.exec(principal.scope(select(GpuInstanceLease), GpuInstanceLease.tenant_id)).all():
        if tenant_id in (None, i.tenant_id):
            fraction = compute_fraction(i.gpu_model, i.profile)
            for a, b in days_between(start, stop):
                micros = lease_gpu_micros(i, 1, a, b)
                if micros:
                    out[(a.date(), i.tenant_id, i.gpu_model)] += Decimal(micros * fraction.numerator) / (
                        3_600_000_000 * fraction.denominator)
    return dict(out)


def test_sql_day_sums_match_the_per_lease_split_exactly(world: World) -> None:
    _fleet(world)
    admin = _principal(world, "admin")
    slugs = {world.tenant("a").id: world.tenant("a").slug, world.tenant("b").id: world.tenant("b").slug}
    for start in (T0, datetime(2026, 3, 1, 1, 59, 59, 3, tzinfo=UTC)):
        expected = _reference(world, admin, start, NOW)
        slices = gpu_hours(world.session, admin, start, END, now=NOW)
        got: dict[tuple[date, int, str], Decimal] = defaultdict(Decimal)
        for s in slices:
            got[(s.day, next(t for t, slug in slugs.items() if slug == s.tenant), s.gpu_model)] += s.gpu_hours
        assert got == {k: v.quantize(HOURS_QUANTUM) for k, v in expected.items()}
    # the 8-GPU lease: 2 h + 1 µs on 28 Feb, 2 h + 1 µs on 1 Mar (a month boundary at midnight)
    whole = [s for s in gpu_hours(world.session, admin, T0, END, now=NOW)
             if s.tenant == "tenant-a" and s.gpu_model.startswith("NVIDIA H100") and s.day == date(2026, 2, 28)]
    mixed_h100 = (datetime(2026, 3, 1, tzinfo=UTC) - datetime(2026, 2, 28, tzinfo=UTC)) / US * 2
    assert whole[0].gpu_hours == (Decimal((2 * 3_600_000_000 + 1) * 8 + mixed_h100) / 3_600_000_000).quantize(HOURS_QUANTUM)


def test_each_tenant_sees_only_its_day_sums_and_the_bare_node_holds_nothing(world: World) -> None:
    _fleet(world)
    admin, a_member, b_member = (_principal(world, name) for name in ("admin", "a_member", "b_member"))
    a, b = world.tenant("a").id, world.tenant("b").id
    rows = daily_lease_micros(world.session, a_member, T0, NOW)
    assert {r.tenant_id for r in rows} == {a}
    assert any(r.vdc_id is None and r.gpu_model is None and r.gpu_micros == 0 for r in rows)  # the GPU-less node
    assert daily_lease_micros(world.session, admin, T0, NOW, tenant_id=b) == daily_lease_micros(world.session, b_member, T0, NOW)
    assert daily_lease_micros(world.session, a_member, T0, NOW, tenant_id=b) == []  # not a's to see
    only_b = total_by(gpu_hours(world.session, b_member, T0, END, now=NOW), "day")
    # 90 min less 1 µs on 1 Mar (8 GPUs) plus the 1 µs lease of the whole node
    assert only_b == {date(2026, 3, 1): (Decimal((90 * 60_000_000 - 1 + 1) * 8) / 3_600_000_000).quantize(HOURS_QUANTUM)}
    assert gpu_hours(world.session, a_member, T0, END, b, now=NOW) == []
    assert {s.tenant for s in gpu_hours(world.session, a_member, T0, END, now=NOW)} == {"tenant-a"}


def test_daily_allocated_and_used_match_the_per_lease_sums(world: World) -> None:
    _fleet(world)
    for name in ("admin", "a_member"):
        principal = _principal(world, name)
        figures = lease_figures(world.session, principal, T0, END, now=NOW)
        per_day = daily_gpu_hours(world.session, principal, T0, END, now=NOW, figures=figures)
        expected: dict[str, Decimal] = defaultdict(Decimal)
        for (day, _, _), hours in _reference(world, principal, T0, NOW).items():
            expected[day.isoformat()] += hours
        # every day some lease overlaps is a row, the GPU-less node's days included (0 where nothing else)
        held = {a.date().isoformat() for f in figures for a, b in days_between(T0, NOW)
                if f.lease.starts_at < b and (f.lease.ends_at is None or f.lease.ends_at > a)}
        assert set(per_day) == held
        assert {d: a for d, (a, _) in per_day.items()} == {d: expected[d].quantize(PLACES) for d in held}


def test_running_leases_are_counted_in_the_callers_scope(world: World) -> None:
    _fleet(world)
    for name in ("admin", "a_member"):
        principal = _principal(world, name)
        assert count_leases(world.session, principal, active=True) == len(list_leases(world.session, principal, active=True))
        assert count_leases(world.session, principal) == len(list_leases(world.session, principal))
    assert count_leases(world.session, _principal(world, "a_member"), tenant_id=world.tenant("b").id) == 0


def test_quota_use_sums_period_gpu_time_in_sql_exactly(world: World) -> None:
    _fleet(world)
    vdc = world.session.exec(select(Vdc.id).where(Vdc.name == "train")).one()
    a, b = world.tenant("a").id, world.tenant("b").id
    uses = quota_uses(world.session, [vdc], at=NOW)
    march = datetime(2026, 3, 1, tzinfo=UTC)
    # a: the 8-GPU lease's 2 h + 1 µs of March, the open mixed node (3 GPUs) since 1 March, a 3/7 instance for 2 h less 500 µs
    a_micros = (Fraction((2 * 3_600_000_000 + 1) * 8 + (NOW - march) // US * 3)
                + Fraction(2 * 3_600_000_000 - 500) * Fraction(3, 7))
    b_micros = Fraction((90 * 60_000_000 - 1) * 8 + 8)
    assert uses[(vdc, a)] == QuotaUse(nodes=1, gpus=3, gpu_hours=hours_of(a_micros))
    assert uses[(vdc, b)] == QuotaUse(nodes=0, gpus=0, gpu_hours=hours_of(b_micros))
    assert uses[(vdc, None)] == QuotaUse(nodes=1, gpus=3, gpu_hours=hours_of(a_micros + b_micros))


def test_metered_gpu_hours_by_sku_are_remembered_until_a_touched_periods_bills_change(world: World) -> None:
    sku = skus.gpu_hour("NVIDIA H100 80GB HBM3")
    shown = label(sku)

    def record(resource: str, hour: datetime) -> None:
        world.session.add(UsageRecord(tenant_id=world.a.id, resource_id=resource, sku=sku, quantity=Decimal(1),
                                      quantity_parts=3_600_000_000, unit="GPU-hour", source="k8s", hour=hour))
        world.session.commit()

    def bill(period: str) -> None:
        world.session.add(Bill(tenant_id=world.a.id, period=period, status="draft", currency="EUR", list_total=Decimal(0),
                               total=Decimal(0)))
        world.session.commit()

    record("n1", datetime(2026, 2, 28, 23, tzinfo=UTC))
    record("n1", datetime(2026, 3, 1, 1, tzinfo=UTC))
    admin = _principal(world, "admin")
    start, end = datetime(2026, 2, 28, 22, 30, 0, 1, tzinfo=UTC), datetime(2026, 3, 1, 1, 30, tzinfo=UTC)
    assert gpu_hours_by_sku(world.session, admin, start, end, None) == {shown: Decimal("2.000000")}
    record("n2", datetime(2026, 2, 28, 23, tzinfo=UTC))  # no bills run yet: the same hours give the same sums
    assert gpu_hours_by_sku(world.session, admin, start + timedelta(minutes=20), end, None) == {shown: Decimal("2.000000")}
    bill("2026-02")  # a bills run of February, the range's earlier period
    assert gpu_hours_by_sku(world.session, admin, start, end, None) == {shown: Decimal("3.000000")}
    assert gpu_hours_by_sku(world.session, admin, start, end, world.b.id) == {}
    assert gpu_hours_by_sku(world.session, _principal(world, "b_member"), start, end, None) == {}
    record("n2", datetime(2026, 3, 1, 0, tzinfo=UTC))
    bill("2026-03")
    assert gpu_hours_by_sku(world.session, _principal(world, "a_member"), start, end, None) == {shown: Decimal("4.000000")}
    assert gpu_hours_by_sku(world.session, admin, start, end - timedelta(minutes=31), None) == {shown: Decimal("3.000000")}
