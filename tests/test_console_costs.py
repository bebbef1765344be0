"""The costs and finance pages' data: exact money, tenant scoping, drill-down, closing a period,
reconciliation with OpenCost — on SQLite and PostgreSQL, through metering's real bills run."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from sqlmodel import select

from collectors.models import K8sAllocation, OpenCostAllocation
from dashboards.cost_data import (
    USAGE_PREVIEW_ROWS,
    bill_csv,
    bill_detail,
    bill_periods,
    budget_alerts,
    line_discount,
    budget_rows,
    line_usage,
    spend_by_day,
    spend_by_sku,
    spend_summary,
)
from dashboards.finance_data import closable, close_period, idle_by_sku, reconciliation, tenant_charges
from kiln.auth import Principal, principal_for_user
from kiln.errors import Conflict, Forbidden, NotFound
from metering.bills import FINALISED, run_period
from metering.models import UsageDay
from metering.budgets import BudgetCreate, check_alerts, create_budget
from tests.factories import World
from tests.metering_helpers import GPU_SKU, NODE_SKU, SYSTEM, at, bill_of, card, discount, lease, node, run

PERIOD = "2026-10"


def principal(world: World, name: str) -> Principal:
    """The Principal of one of the world's callers."""
    return principal_for_user(world.session, world.callers[name].user)


def october(world: World) -> None:
    """Tenant A: a 2-GPU node for 48 h from Oct 1; tenant B (10 % off): a 1-GPU node for 12 h on Oct 2;
    namespace ns-a (tenant A) requests 1 GPU for 10 h on an unleased node; OpenCost saw ns-a and ns-b."""
    node_a, node_b = node(world, gpus=2, name="node-a"), node(world, gpus=1, name="node-b")
    node(world, gpus=1, name="node-c")
    card(world, GPU_SKU, "2.00")
    card(world, NODE_SKU, "1.00")
    discount(world, "b", "10")
    lease(world, node_a, "a", "2026-10-01T00:00", "2026-10-03T00:00")
    lease(world, node_b, "b", "2026-10-02T12:00", "2026-10-03T00:00")
    world.session.add(K8sAllocation(namespace="ns-a", tenant_slug="tenant-a", pod="train-0", pod_uid="uid-1", node_name="node-c",
                                    resource="nvidia.com/gpu", quantity=Decimal(1), starts_at=at("2026-10-05T00:00"),
                                    ends_at=at("2026-10-05T10:00")))
    for namespace, gpu_hours, cost in (("ns-a", "10", "18.50"), ("ns-b", "4", "9.00")):
        world.session.add(OpenCostAllocation(namespace=namespace, window_start=at("2026-10-05T00:00"), window_end=at("2026-10-06T00:00"),
                                             gpu_hours=Decimal(gpu_hours), total_cost=Decimal(cost)))
    world.session.commit()
    create_budget(world.session, SYSTEM, BudgetCreate(tenant="tenant-a", name="a monthly", amount=Decimal("300"), currency="EUR"))
    world.session.commit()
    run(world, PERIOD, now="2026-11-05T00:00")
    check_alerts(world.session, SYSTEM, PERIOD)
    world.session.commit()


def test_tenant_spend_by_sku_and_day_is_exact_and_scoped(world: World) -> None:
    october(world)
    member_a, member_b, admin = principal(world, "a_member"), principal(world, "b_member"), principal(world, "admin")
    # A: 48 node-hours × 1.00 + 96 GPU-hours × 2.00 + ns-a 10 GPU-hours × 2.00
    assert spend_by_sku(world.session, member_a, PERIOD) == {GPU_SKU: Decimal("212.00"), NODE_SKU: Decimal("48.00")}
    assert spend_by_day(world.session, member_a, PERIOD) == {
        GPU_SKU: {"2026-10-01": Decimal("96.00"), "2026-10-02": Decimal("96.00"), "2026-10-05": Decimal("20.00")},
        NODE_SKU: {"2026-10-01": Decimal("24.00"), "2026-10-02": Decimal("24.00")}}
    # B pays 90 %: 12 GPU-hours × 1.80 and 12 node-hours × 0.90, all on Oct 2
    assert spend_by_day(world.session, member_b, PERIOD) == {GPU_SKU: {"2026-10-02": Decimal("21.60")},
                                                             NODE_SKU: {"2026-10-02": Decimal("10.80")}}
    everyone = spend_by_day(world.session, admin, PERIOD)
    assert everyone[GPU_SKU]["2026-10-02"] == Decimal("117.60")
    only_b = spend_by_sku(world.session, admin, PERIOD, world.b.id)
    assert only_b == {GPU_SKU: Decimal("21.60"), NODE_SKU: Decimal("10.80")}
    assert spend_by_sku(world.session, member_a, PERIOD, world.b.id) == {}  # a filter never widens the scope


def test_spend_by_day_follows_a_new_bills_run(world: World) -> None:
    october(world)
    member_a = principal(world, "a_member")
    before = spend_by_day(world.session, member_a, PERIOD)
    assert "2026-10-20" not in before[GPU_SKU]
    lease(world, node(world, gpus=1, name="node-d"), "a", "2026-10-20T00:00", "2026-10-21T00:00")
    assert spend_by_day(world.session, member_a, PERIOD) == before  # usage is what the last bills run built
    run(world, PERIOD, now="2026-11-05T00:00")
    after = spend_by_day(world.session, member_a, PERIOD)
    assert (after[GPU_SKU]["2026-10-20"], after[NODE_SKU]["2026-10-20"]) == (Decimal("48.00"), Decimal("24.00"))


def test_a_bills_run_of_another_period_keeps_a_periods_sums(world: World) -> None:
    october(world)
    admin = principal(world, "admin")
    before = spend_by_day(world.session, admin, PERIOD)
    october_rows = day_rows(world, PERIOD)
    lease(world, node(world, gpus=1, name="node-d"), "a", "2026-11-02T00:00", "2026-11-03T00:00")
    run(world, "2026-11", now="2026-11-05T00:00")  # the hourly run of the next (running) month
    assert day_rows(world, PERIOD) == october_rows and spend_by_day(world.session, admin, PERIOD) == before
    assert spend_by_day(world.session, admin, "2026-11")[GPU_SKU] == {"2026-11-02": Decimal("48.00")}


def day_rows(world: World, period: str) -> list[tuple]:
    """The period's `usage_day` rows, ids included (a row rewritten gets a new id)."""
    world.session.expire_all()
    return [(r.id, r.tenant_id, r.day, r.sku, r.namespace, r.quantity_parts, r.contracted_cost) for r in world.session.exec(
        select(UsageDay).where(UsageDay.period == period).order_by(UsageDay.id)).all()]


def test_summary_forecast_budgets_and_alerts(world: World) -> None:
    october(world)
    member_a = principal(world, "a_member")
    summary = spend_summary(world.session, member_a, PERIOD)
    assert [b.tenant for b in summary.bills] == ["tenant-a"]
    assert (summary.to_date, summary.forecast, summary.currency) == (Decimal("260.00"), Decimal("260.00"), "EUR")
    everyone = spend_summary(world.session, principal(world, "finance"), PERIOD)
    assert everyone.to_date == Decimal("292.40") and len(everyone.bills) == 2
    assert bill_periods(world.session, member_a) == [PERIOD]
    rows = budget_rows(world.session, member_a, PERIOD)
    assert [(r["name"], r["spent"], r["percent"], r["thresholds"]) for r in rows] == [
        ("a monthly", Decimal("260.00"), Decimal("86.7"), [50, 80, 100])]
    assert budget_rows(world.session, principal(world, "b_member"), PERIOD) == []
    assert sorted(a.threshold for a in budget_alerts(world.session, member_a, PERIOD)) == [50, 80]
    assert budget_alerts(world.session, principal(world, "b_member"), PERIOD) == []


def test_forecast_extrapolates_a_running_period(world: World) -> None:
    node_a = node(world, gpus=1, name="node-a")
    card(world, GPU_SKU, "2.00")
    lease(world, node_a, "a", "2026-10-01T00:00", None)
    run_period(world.session, SYSTEM, PERIOD, policy="platform", now=at("2026-10-11T00:00"))  # 10 of 31 days
    world.session.commit()
    summary = spend_summary(world.session, principal(world, "a_member"), PERIOD)  # not on the clock: on the run
    assert summary.to_date == Decimal("480.00")  # 240 GPU-hours × 2.00 (node-hours have no card: 0)
    assert summary.forecast == Decimal("1488.00")  # × 31 / 10


def test_bill_detail_drill_down_and_csv(world: World) -> None:
    october(world)
    member_a, member_b = principal(world, "a_member"), principal(world, "b_member")
    bill = bill_of(world, "a")
    detail = bill_detail(world.session, member_a, bill.id)
    gpu_line = next(l for l in detail.lines if l.sku == GPU_SKU)
    found = line_usage(world.session, member_a, bill.id, gpu_line.id)
    assert found.by_resource == [("k8s:ns-a", "k8s", Decimal("10")), ("node-a", "lease", Decimal("96"))]
    assert found.hour_count == 48 + 10 and len(found.hours) == USAGE_PREVIEW_ROWS == 48  # the first hours, in order
    assert found.hours[0].hour == at("2026-10-01T00:00") and found.hours[0].resource_id == "node-a"
    assert {u.tenant for u in found.hours} == {"tenant-a"}
    with pytest.raises(NotFound):
        bill_detail(world.session, member_b, bill.id)
    with pytest.raises(NotFound):
        line_usage(world.session, member_b, bill.id, gpu_line.id)
    rows = list(csv.DictReader(io.StringIO(bill_csv(detail).decode())))
    lines, total = rows[:-1], rows[-1]
    assert total["kind"] == "total" and Decimal(total["contracted_cost"]) == Decimal(bill.total) == Decimal("260.00")
    assert sum(Decimal(r["contracted_cost"]) for r in lines) == Decimal(bill.total)
    assert {r["tenant"] for r in rows} == {"tenant-a"}


def test_a_lines_page_of_usage_follows_the_first(world: World) -> None:
    october(world)
    member_a = principal(world, "a_member")
    bill = bill_of(world, "a")
    gpu_line = next(l for l in bill_detail(world.session, member_a, bill.id).lines if l.sku == GPU_SKU)
    second = line_usage(world.session, member_a, bill.id, gpu_line.id, page=1)
    assert (second.page, len(second.hours)) == (1, 10)  # 58 records, 48 a page
    assert second.hours[0].hour == at("2026-10-05T00:00") and second.hours[0].resource_id == "k8s:ns-a"
    assert line_usage(world.session, member_a, bill.id, gpu_line.id, page=9).page == 1  # clamped to the last


def test_bill_lines_show_list_and_contracted_prices_and_the_discount(world: World) -> None:
    """Issue 18: the bill showed the list unit price beside a discounted amount, with no contracted
    price or discount column."""
    from dashboards.pages.bill import LINE_COLUMNS, line_row, lines_block

    october(world)
    detail = bill_detail(world.session, principal(world, "b_member"), bill_of(world, "b").id)
    gpu_line = next(l for l in detail.lines if l.sku == GPU_SKU)
    row = dict(zip(LINE_COLUMNS, line_row(gpu_line), strict=True))
    assert (row["list unit price"], row["contracted unit price"], row["discount"]) == ("€2.00", "€1.80", "10.00 %")
    assert (row["at list price"], row["billed"], row["quantity"]) == ("€24.00", "€21.60", "12.00 GPU-Hours")
    assert row["SKU"].children == "GPU-hour · NVIDIA H100 80GB HBM3" and row["SKU"].title == GPU_SKU
    correction = gpu_line.model_copy(update={"kind": "correction", "description": "correction of 2026-09: more usage"})
    assert line_row(correction)[1].children[2].children == "correction of 2026-09: more usage"  # says what it corrects
    assert line_discount(next(l for l in detail.lines if l.sku == NODE_SKU)) == Decimal("10.00")
    pager, _ = lines_block(detail, 5)  # clamped: two lines are one page
    assert pager.children[1].children == "page 1 of 1" and pager.children[0].disabled and pager.children[2].disabled


def test_budgets_show_their_forecast(world: World) -> None:
    node_a = node(world, gpus=1, name="node-a")
    card(world, GPU_SKU, "2.00")
    lease(world, node_a, "a", "2026-10-01T00:00", None)
    create_budget(world.session, SYSTEM, BudgetCreate(tenant="tenant-a", name="a monthly", amount=Decimal("1000"), currency="EUR"))
    run_period(world.session, SYSTEM, PERIOD, policy="platform", now=at("2026-10-11T00:00"))
    world.session.commit()
    (row,) = budget_rows(world.session, principal(world, "a_member"), PERIOD)
    assert (row["spent"], row["percent"], row["forecast"], row["forecast_percent"]) == (
        Decimal("480.00"), Decimal("48.0"), Decimal("1488.00"), Decimal("148.8"))
    assert budget_rows(world.session, principal(world, "b_member"), PERIOD) == []
    from dashboards.cost_tables import budget_cells, budget_state

    assert budget_state(row["percent"], row["forecast_percent"], row["thresholds"]) == "forecast to cross 100 %"
    assert budget_state(Decimal("85"), Decimal("90"), [50, 80, 100]) == "spent past 80 %"
    assert budget_state(Decimal("10"), Decimal("40"), [50, 80, 100]) == "on track"
    assert budget_state(Decimal("100"), Decimal("100"), [50, 80, 100]) == "over budget"
    (cells,) = budget_cells([row])
    assert (cells["spent"], cells["forecast"], cells["forecast_percent"], cells["state"]) == (
        "€480.00", "€1,488.00", "148.8", "forecast to cross 100 %")


def test_finance_charges_idle_and_scoping(world: World) -> None:
    october(world)
    finance = principal(world, "finance")
    charges = tenant_charges(world.session, finance, PERIOD)
    assert [(c.tenant, c.total, c.list_total, c.status) for c in charges] == [
        ("tenant-a", Decimal("260.00"), Decimal("260.00"), "draft"), ("tenant-b", Decimal("32.40"), Decimal("36.00"), "draft")]
    assert [c.tenant for c in tenant_charges(world.session, principal(world, "b_member"), PERIOD)] == ["tenant-b"]
    idle = idle_by_sku(world.session, finance, PERIOD)
    # capacity 3 nodes × 744 h minus 60 leased node-hours; GPUs 4 × 744 minus 96 + 12 leased and 10 requested
    assert idle == {GPU_SKU: Decimal("5716.00"), NODE_SKU: Decimal("2172.00")}
    assert idle_by_sku(world.session, principal(world, "a_member"), PERIOD) == {}


def test_reconciliation_with_opencost(world: World) -> None:
    october(world)
    rows, currency = reconciliation(world.session, principal(world, "finance"), PERIOD)
    assert currency == "EUR"
    assert [(r.namespace, r.tenant, r.kiln_cost, r.opencost_cost, r.difference, r.kiln_gpu_hours, r.opencost_gpu_hours)
            for r in rows] == [
        ("ns-a", "tenant-a", Decimal("20.00"), Decimal("18.50"), Decimal("1.50"), Decimal("10"), Decimal("10")),
        ("ns-b", None, Decimal("0.00"), Decimal("9.00"), Decimal("-9.00"), Decimal("0"), Decimal("4"))]
    mine, _ = reconciliation(world.session, principal(world, "b_member"), PERIOD)
    assert mine == []  # ns-b belongs to no known tenant; ns-a is tenant A's
    world.session.add(OpenCostAllocation(namespace="ns-a", window_start=at("2026-10-06T00:00"), window_end=at("2026-10-07T00:00"),
                                         gpu_hours=Decimal(1), total_cost=Decimal("2.00")))
    world.session.commit()  # a new OpenCost import shows at once (the result is remembered only while nothing changed)
    again, _ = reconciliation(world.session, principal(world, "finance"), PERIOD)
    assert (again[0].opencost_cost, again[0].difference, again[0].opencost_gpu_hours) == (Decimal("20.50"), Decimal("-0.50"), Decimal("11"))


def test_close_period_finalises_and_refuses_twice(world: World) -> None:
    october(world)
    assert closable(world.session, PERIOD)[0]
    with pytest.raises(Forbidden):
        close_period(world.session, principal(world, "a_admin"), PERIOD, "platform")
    done = close_period(world.session, principal(world, "finance"), PERIOD, "platform")
    world.session.commit()
    assert sorted(b.status for b in done) == [FINALISED, FINALISED]
    assert bill_of(world, "a").status == FINALISED and bill_of(world, "a").total == Decimal("260.00")
    can, why = closable(world.session, PERIOD)
    assert not can and "finalised" in why
    with pytest.raises(Conflict):
        close_period(world.session, principal(world, "finance"), PERIOD, "platform")
    can, why = closable(world.session, "2099-01")
    assert not can and "has not ended" in why


def test_setup_hints_are_for_infra_admins_only(world: World) -> None:
    from dashboards.pages.finance import opencost_notice

    finance, admin = principal(world, "finance"), principal(world, "admin")
    assert opencost_notice(finance, connected=False) == "OpenCost is not connected, so there is nothing to reconcile with."
    assert "KILN_OPENCOST_URL" in opencost_notice(admin, connected=False)
    assert "kiln_collector_up" not in opencost_notice(finance, connected=True)
    assert "kiln_collector_up" in opencost_notice(admin, connected=True)


def test_the_budget_chart_formats_only_the_bars_it_draws(monkeypatch) -> None:  # noqa: ANN001
    """30 budgets: the 25 most spent (as a share) are drawn, labelled with exact amounts; the rest
    are counted in the title, not formatted."""
    from dashboards.pages import costs

    rows = [{"tenant": f"tenant-{i:02d}", "name": "monthly", "currency": "EUR", "amount": Decimal("1000.00"),
             "spent": Decimal(i * 10) + Decimal("0.01"), "percent": (Decimal(i * 10) + Decimal("0.01")) / 10,
             "thresholds": [80, 100]} for i in range(30)]
    formatted: list[Decimal] = []
    real = costs.amount
    monkeypatch.setattr(costs, "amount", lambda value, currency: formatted.append(value) or real(value, currency))
    figure = costs.budget_figure(rows)
    bar = figure["data"][0]
    assert figure["layout"]["title"]["text"] == "Budgets: spend this period (% of budget): the 25 highest of 30"
    assert bar["y"] == [f"tenant-{i:02d} · monthly" for i in range(29, 4, -1)]
    assert bar["text"][0] == "€290.01 of €1,000.00 (29.0 %)"
    assert len(formatted) == 2 * 25
