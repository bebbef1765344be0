"""The usage page's faster reads, exact against what they replaced: per-lease utilisation in SQL
against the rule walked in exact fractions (gaps over an hour, lease-end clipping, midnight), GPU-hours by
model with whole-node leases summed from the leases and only the rest metered, and the tenant
picker searched on the server in the caller's scope; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import flask
import pytest

import metering.efficiency as efficiency_module
from collectors.models import Rollup5m
from collectors.utilisation_days import seal
from dashboards import tenant_picker
from dashboards.context import ConsoleContext
from dashboards.pages import usage
from dashboards.pages.usage import gpu_hours_by_sku
from dashboards.tenant_picker import ALL, slug_options, tenant_options
from fleet.models import Gpu
from fleet.tenancy_models import Lease
from kiln.auth import Principal, principal_for_user
from kiln.models import Tenant
from metering import skus
from metering.allocation import daily_gpu_hours
from metering.efficiency import PLACES, combined, lease_figures, lease_totals, per_tenant, totals_of
from metering.models import Bill, UsageRecord
from metering.sku_labels import label
from tests.factories import World
from tests.fleet_helpers import make_node_row

T0 = datetime(2026, 3, 1, 21, 17, 3, 250_001, tzinfo=UTC)  # ragged
NOW = datetime(2026, 3, 3, 9, tzinfo=UTC)
US = timedelta(microseconds=1)
MAX = timedelta(hours=1)


def _principal(world: World, name: str) -> Principal:
    return principal_for_user(world.session, world.callers[name].user)


def _reference(days: dict[date, tuple[Fraction, Fraction]], series: list[tuple[datetime, float]],
               counted: tuple[datetime, datetime], lease_end: datetime | None) -> None:
    """The rule, one sample at a time in datetimes and exact fractions: each of one GPU's samples
    (its whole series, ascending) with its bucket in `counted` stands for the time since the
    previous sample (5 minutes when none is within an hour), never past its UTC midnight or
    `lease_end`; added to `days`."""
    previous = None
    for bucket, mean in series:
        gap = bucket - previous if previous is not None else None
        previous = bucket
        if not counted[0] <= bucket < counted[1]:
            continue
        interval = gap if gap is not None and gap <= MAX else timedelta(minutes=5)
        ends = [datetime.combine(bucket.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)]
        interval = min(interval, *(end - bucket for end in ends + ([lease_end] if lease_end else [])))
        hours = Fraction(interval // US, 3_600_000_000)
        measured, used = days.get(bucket.date(), (Fraction(0), Fraction(0)))
        days[bucket.date()] = (measured + hours, used + hours * Fraction(str(mean)) / 100)


def _sampled_leases(world: World) -> dict[int, dict[date, tuple[Fraction, Fraction]]]:
    """Two nodes, three leases (one ending a ragged microsecond into a sample, one open, one on the
    second node across midnight), samples 5 minutes apart, exactly 1 h apart, 1 h + 1 µs apart (a
    gap), and alone; returns what each lease's days must be."""
    nodes = [make_node_row(world, name=f"n{k}", gpus=0) for k in range(2)]
    for k, node in enumerate(nodes):
        for index in range(2):
            world.session.add(Gpu(node_id=node.id, index=index, model="NVIDIA H100 80GB HBM3", uuid=f"GPU-{k}-{index}"))
    base = datetime(2026, 3, 1, 21, 30, tzinfo=UTC)
    offsets = [timedelta(minutes=m) for m in (0, 5, 10, 70, 130)] + [timedelta(minutes=130) + MAX + US,
                                                                     timedelta(hours=5, minutes=1), timedelta(hours=9)]
    means = [100.0, 37.5, 12.345678901234567, 0.0, 66.66666666666667, 99.9, 3.0, 50.0]
    for k in range(2):
        for index in range(2):
            for step, (offset, mean) in enumerate(zip(offsets, means, strict=True)):
                world.session.add(Rollup5m(entity=f"GPU-{k}-{index}", metric="gpu_util_percent", bucket=base + offset,
                                           count=3, sum=mean * 3, min=mean, max=mean))
    a, b = world.tenant("a").id, world.tenant("b").id
    spans = [(a, nodes[0], base - timedelta(hours=1), base + timedelta(hours=2, minutes=12, microseconds=7)),
             (b, nodes[0], base + timedelta(hours=2, minutes=12, microseconds=7), None),
             (a, nodes[1], base + timedelta(minutes=3), base + timedelta(hours=5, minutes=3))]
    leases = []
    for tenant, node, start, end in spans:
        leases.append(Lease(tenant_id=tenant, node_id=node.id, starts_at=start, ends_at=end, created_by="t"))
        world.session.add(leases[-1])
    world.session.commit()
    expected: dict[int, dict[date, tuple[Fraction, Fraction]]] = {}
    series = [(base + o, m * 3 / 3) for o, m in zip(offsets, means, strict=True)]  # the mean as the database divides it
    for lease, (_, node, start, end) in zip(leases, spans, strict=True):
        days: dict[date, tuple[Fraction, Fraction]] = {}
        for _ in range(2):  # the node's two GPUs, the same samples each
            _reference(days, series, (max(start, T0), min(end or NOW, NOW)), end)
        expected[lease.id] = days
    return expected


@pytest.mark.parametrize("per_query", [500, 0])  # a few leases named in the query, or one pass over the range
def test_lease_utilisation_is_exactly_the_per_sample_walk(world: World, monkeypatch, per_query: int) -> None:
    expected = _sampled_leases(world)
    monkeypatch.setattr(efficiency_module, "LEASES_PER_QUERY", per_query)
    figures = {f.lease.id: f for f in lease_figures(world.session, _principal(world, "admin"), T0, NOW, now=NOW)}
    got = {lease_id: f.days for lease_id, f in figures.items() if f.days}
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in expected.items() if v}
    for lease_id, days in got.items():  # measured time to the microsecond; used within half a µs·% per sample (rounded)
        for day, (measured, used) in days.items():
            exact_measured, exact_used = expected[lease_id][day]
            assert abs(Fraction(measured) - exact_measured) < Fraction(1, 10**20), (lease_id, day)
            assert abs(Fraction(used) - exact_used) < Fraction(32, 2 * 360_000_000_000), (lease_id, day)
            assert used.quantize(PLACES) == Decimal(exact_used.numerator / exact_used.denominator).quantize(PLACES)
    assert all(f.measured == sum((m for m, _ in f.days.values()), Decimal(0)) for f in figures.values())
    assert sum(len(days) for days in expected.values()) >= 4  # across midnight, and every lease measured
    mine = lease_figures(world.session, _principal(world, "b_member"), T0, NOW, now=NOW)
    assert [f.lease.tenant_id for f in mine] == [world.tenant("b").id]
    # asked alone, b's lease gets its own samples of the node a leased before, not a's
    assert mine[0].days == got[mine[0].lease.id] and mine[0].days != got[min(got)]


@pytest.mark.parametrize(("per_query", "sealed"), [(500, False), (0, False), (0, True)])  # kept sums summed per tenant
@pytest.mark.parametrize("name", ["admin", "a_member", "b_member"])
def test_lease_totals_are_the_per_lease_figures_summed_within_the_callers_tenants(world: World, name: str, monkeypatch,
                                                                                  per_query: int, sealed: bool) -> None:
    _sampled_leases(world)
    monkeypatch.setattr(efficiency_module, "LEASES_PER_QUERY", per_query)
    if sealed:  # the utilisation-days job has kept the days
        assert seal(world.session, NOW) == [date(2026, 3, 3), date(2026, 3, 2), date(2026, 3, 1)]
        world.session.commit()
    caller = _principal(world, name)
    figures = lease_figures(world.session, caller, T0, NOW, now=NOW)
    totals = lease_totals(world.session, caller, T0, NOW, now=NOW)
    assert totals.combined() == combined(per_tenant(world.session, figures))
    assert totals.used_by_day == totals_of(figures).used_by_day and totals.instances == []
    assert daily_gpu_hours(world.session, caller, T0, NOW, now=NOW, totals=totals) == daily_gpu_hours(
        world.session, caller, T0, NOW, now=NOW, figures=figures)
    visible = {"admin": {world.a.id, world.b.id}, "a_member": {world.a.id}, "b_member": {world.b.id}}[name]
    assert set(totals.by_tenant) == visible and totals.combined().measured_gpu_hours > 0


def _page(world: World, name: str, monkeypatch, rows_with_the_page: int) -> tuple:
    monkeypatch.setattr(usage, "LEASES_WITH_THE_PAGE", rows_with_the_page)
    monkeypatch.setattr(usage, "utcnow", lambda: NOW)
    monkeypatch.setattr(usage, "day_range_bounds", lambda _: (T0, NOW))
    app = flask.Flask(__name__)
    app.config["KILN_CONSOLE"] = ConsoleContext(settings=None, engine=world.session.get_bind(), state=None, codec=None)
    with app.test_request_context("/"):
        flask.g.principal = _principal(world, name)
        return usage.first_paint(ALL, "7d")


@pytest.mark.parametrize("name", ["admin", "a_member"])
def test_the_overview_without_lease_rows_is_the_overview_with_them(world: World, monkeypatch, name: str) -> None:
    _sampled_leases(world)
    overview, details = _page(world, name, monkeypatch, 200)  # 3 leases: the per-lease grid comes with the page
    summed, on_demand = _page(world, name, monkeypatch, 0)  # over the limit: sums only, the grid on demand
    assert repr(summed) == repr(overview) and "usage-details-hint" in repr(on_demand)
    assert "usage-allocation-table" in repr(details) and "usage-allocation-table" not in repr(on_demand)
    if name == "a_member":  # tenant a's leases only: b's open lease is not in its allocation
        assert repr(overview) != repr(_page(world, "admin", monkeypatch, 0)[0])


def test_gpu_hours_by_model_sum_leases_from_leases_and_meter_the_rest_until_bills_change(world: World) -> None:
    node = make_node_row(world, name="whole", gpus=2)  # two H100s (make_node_row's model)
    model = "NVIDIA H100 80GB HBM3"
    world.session.add(Lease(tenant_id=world.a.id, node_id=node.id, starts_at=datetime(2026, 3, 1, 0, 30, 0, 1, tzinfo=UTC),
                            ends_at=datetime(2026, 3, 1, 2, tzinfo=UTC), created_by="t"))
    mig = skus.gpu_hour(model, "3g.40gb")

    def record(resource: str, sku: str, source: str, hour: datetime, tenant: int | None = None) -> None:
        world.session.add(UsageRecord(tenant_id=tenant or world.a.id, resource_id=resource, sku=sku, quantity=Decimal(1),
                                      quantity_parts=3_600_000_000, unit="GPU-hour", source=source, hour=hour))
        world.session.commit()

    hour = datetime(2026, 3, 1, 1, tzinfo=UTC)
    record("whole", skus.gpu_hour(model), "lease", hour)  # the lease's own record: from the lease, not counted twice
    record("ns/pod", skus.gpu_hour(model), "k8s", hour)
    record("whole/0", mig, "lease", hour)  # a GPU instance lease
    record("other", skus.gpu_hour(model), "k8s", hour, world.b.id)
    start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 1, 6, tzinfo=UTC)
    admin, a_member = _principal(world, "admin"), _principal(world, "a_member")
    whole = (Decimal(3 * 60 * 60_000_000 - 2) / 3_600_000_000).quantize(Decimal("0.000001"))  # 1.5 h less 1 µs × 2 GPUs
    assert gpu_hours_by_sku(world.session, a_member, start, end, None) == {
        label(skus.gpu_hour(model)): whole + 1, label(mig): Decimal("1.000000")}
    assert gpu_hours_by_sku(world.session, admin, start, end, None)[label(skus.gpu_hour(model))] == whole + 2
    assert gpu_hours_by_sku(world.session, admin, start, end, world.b.id) == {label(skus.gpu_hour(model)): Decimal("1.000000")}
    assert gpu_hours_by_sku(world.session, _principal(world, "b_member"), start, end, world.a.id) == {}
    record("ns/pod", skus.gpu_hour(model), "k8s", hour + timedelta(hours=1))  # no bills run: still remembered
    assert gpu_hours_by_sku(world.session, a_member, start, end, None)[label(skus.gpu_hour(model))] == whole + 1
    world.session.add(Bill(tenant_id=world.a.id, period="2026-03", status="draft", currency="EUR", list_total=Decimal(0),
                           total=Decimal(0)))
    world.session.commit()
    assert gpu_hours_by_sku(world.session, a_member, start, end, None)[label(skus.gpu_hour(model))] == whole + 2


def _options(world: World, name: str, search: str | None, chosen: str | None, *, slugs: bool = False) -> list[str]:
    app = flask.Flask(__name__)
    app.config["KILN_CONSOLE"] = ConsoleContext(settings=None, engine=world.session.get_bind(), state=None, codec=None)
    with app.test_request_context("/"):
        flask.g.principal = _principal(world, name)
        return [o["value"] for o in (slug_options(search) if slugs else tenant_options(search, chosen))]


def test_the_tenant_picker_searches_the_callers_tenants_on_the_server(world: World, monkeypatch) -> None:
    for k in range(5):
        world.session.add(Tenant(name=f"Zeta {k} 100%_off", slug=f"zeta-{k}"))
    world.session.commit()
    monkeypatch.setattr(tenant_picker, "TENANT_CHOICES", 3)
    slugs = sorted(world.session.exec(Tenant.__table__.select()).all(), key=lambda t: t.slug)
    assert _options(world, "admin", None, ALL) == [ALL, *[t.slug for t in slugs[:3]]]
    assert _options(world, "admin", "ZETA", ALL) == [ALL, "zeta-0", "zeta-1", "zeta-2"]
    assert _options(world, "admin", "zeta 4", ALL) == [ALL, "zeta-4"]  # by name, case-insensitive
    assert _options(world, "admin", "0%_", ALL) == [ALL, "zeta-0", "zeta-1", "zeta-2"]  # % and _ are text
    assert _options(world, "admin", "1%_", ALL) == [ALL]
    assert _options(world, "admin", "", "zeta-4") == [ALL, *[t.slug for t in slugs[:3]], "zeta-4"]  # the choice kept
    member = _options(world, "a_member", None, ALL)
    assert member == [ALL, world.a.slug]
    assert _options(world, "a_member", "tenant", world.b.slug) == [ALL, world.a.slug]  # never another's
    assert _options(world, "a_member", "zeta", ALL) == [ALL]
    # the VDC editor's "grant to": the same search, slugs only, no "all"
    assert _options(world, "admin", "ZETA", None, slugs=True) == ["zeta-0", "zeta-1", "zeta-2"]
    assert _options(world, "a_member", None, None, slugs=True) == [world.a.slug]
