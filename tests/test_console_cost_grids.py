"""The costs page's grids paged on the server (`dashboards.cost_tables`, `dashboards.server_grid`):
blocks in the lists' own order, sorted and filtered as AG Grid would, exact amounts, and a
caller's blocks never holding another tenant's rows — on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace

import flask
import pytest
from sqlalchemy import Engine

from dashboards import server_grid
from dashboards.context import ConsoleContext
from dashboards.cost_data import alert_count, alert_rows, budget_alerts, spend_summary
from dashboards.cost_tables import ALERTS, BILLS, BUDGETS, rows_block
from dashboards.pages.costs import update
from dashboards.tenant_picker import ALL
from kiln.auth import Principal
from metering.budgets import BudgetCreate, check_alerts, create_budget
from tests.factories import World
from tests.metering_helpers import GPU_SKU, SYSTEM, card, lease, node, run
from tests.test_console_costs import PERIOD, principal

FIRST = {"startRow": 0, "endRow": 50}


@pytest.fixture
def billed(world: World) -> World:
    """Both tenants leased GPUs in October, each has two budgets, and their alerts are raised."""
    card(world, GPU_SKU, "2.00")
    lease(world, node(world, gpus=2, name="node-a"), "a", "2026-10-01T00:00", "2026-10-03T00:00")
    lease(world, node(world, gpus=1, name="node-b"), "b", "2026-10-02T00:00", "2026-10-02T12:00")
    for tenant, amounts in (("tenant-a", ("100", "1000")), ("tenant-b", ("10", "500"))):
        for amount in amounts:
            create_budget(world.session, SYSTEM, BudgetCreate(tenant=tenant, name=f"{tenant} {amount}", amount=Decimal(amount),
                                                              currency="EUR"))
    world.session.commit()
    run(world, PERIOD, now="2026-11-05T00:00")
    check_alerts(world.session, SYSTEM, PERIOD)
    world.session.commit()
    return world


@pytest.fixture
def as_caller(engine: Engine) -> Iterator:
    """Runs a console callback as a caller, in a request of a console on the test database."""
    app = flask.Flask(__name__)
    settings = SimpleNamespace(carbon_zone=None, embodied_kg_per_node_hour={})
    app.config["KILN_CONSOLE"] = ConsoleContext(settings=settings, engine=engine, state=None, codec=None)
    server_grid.forget()

    def call(who: Principal, step):  # noqa: ANN001, ANN202 - a test helper
        with app.test_request_context("/"):
            flask.g.principal = who
            return step()
    yield call
    server_grid.forget()


def test_alert_pages_read_in_sql_follow_the_alert_list_and_its_scope(billed: World) -> None:
    admin, member_a = principal(billed, "admin"), principal(billed, "a_member")
    everything = budget_alerts(billed.session, admin, PERIOD)
    assert len(everything) >= 4 and alert_count(billed.session, admin, PERIOD) == len(everything)
    paged = alert_rows(billed.session, admin, PERIOD, None, 0, 2) + alert_rows(billed.session, admin, PERIOD, None, 2, 100)
    assert [(a.created_at, a.tenant, a.threshold, a.message) for a in paged] == [
        (a.created_at, a.tenant, a.threshold, a.message) for a in everything]
    mine = alert_rows(billed.session, member_a, PERIOD, None, 0, 100)
    assert mine and {a.tenant for a in mine} == {"tenant-a"}
    assert alert_count(billed.session, member_a, PERIOD) == len(mine)
    assert alert_rows(billed.session, member_a, PERIOD, billed.b.id, 0, 100) == []


def test_grid_blocks_are_the_callers_tenants_only(billed: World, as_caller) -> None:  # noqa: ANN001
    member_a, admin = principal(billed, "a_member"), principal(billed, "admin")
    as_caller(admin, lambda: update(ALL, PERIOD))  # keeps the admin's bills and budgets
    for table in (BILLS, BUDGETS, ALERTS):
        for request in (FIRST, {**FIRST, "sortModel": [{"colId": "tenant", "sort": "desc"}]}):
            rows = as_caller(member_a, lambda: rows_block(table, request, ALL, PERIOD))["rowData"]
            assert rows and {r["tenant"] for r in rows} == {"tenant-a"}, table
            other = as_caller(member_a, lambda: rows_block(table, request, "tenant-b", PERIOD))
            assert other == {"rowData": [], "rowCount": 0}, table
        everyone = as_caller(admin, lambda: rows_block(table, FIRST, ALL, PERIOD))["rowData"]
        assert {r["tenant"] for r in everyone} == {"tenant-a", "tenant-b"}, table


def test_blocks_sort_and_filter_as_the_grid_would_with_exact_amounts(billed: World, as_caller) -> None:  # noqa: ANN001
    admin = principal(billed, "admin")
    bills = spend_summary(billed.session, admin, PERIOD).bills
    by_billed = as_caller(admin, lambda: rows_block(BILLS, {**FIRST, "sortModel": [{"colId": "billed", "sort": "desc"}]},
                                                     ALL, PERIOD))
    assert [r["billed"] for r in by_billed["rowData"]] == [str(b.total) for b in sorted(bills, key=lambda b: -b.total)]
    assert sum(Decimal(r["billed"]) for r in by_billed["rowData"]) == sum(b.total for b in bills)
    small = {"filterModel": {"amount": {"filterType": "text", "type": "startsWith", "filter": "€1"}},
             "sortModel": [{"colId": "amount", "sort": "asc"}]}
    budgets = as_caller(admin, lambda: rows_block(BUDGETS, {**FIRST, **small}, ALL, PERIOD))
    assert [r["budget"] for r in budgets["rowData"]] == ["tenant-b 10", "tenant-a 100", "tenant-a 1000"]  # by value, not text
    page = as_caller(admin, lambda: rows_block(BUDGETS, {"startRow": 1, "endRow": 2, "sortModel": [
        {"colId": "amount", "sort": "desc"}]}, ALL, PERIOD))
    assert page["rowCount"] == 4 and [r["budget"] for r in page["rowData"]] == ["tenant-b 500"]
    over = {"filterModel": {"threshold": {"filterType": "number", "type": "greaterThanOrEqual", "filter": 100}}}
    alerts = as_caller(admin, lambda: rows_block(ALERTS, {**FIRST, **over}, ALL, PERIOD))
    assert alerts["rowCount"] >= 1 and all(r["threshold"] >= 100 for r in alerts["rowData"])


def test_the_page_callback_keeps_the_lists_and_a_grid_builds_their_cells_once(billed: World, as_caller,
                                                                              monkeypatch) -> None:  # noqa: ANN001
    from dashboards import cost_tables
    from dashboards.pages import costs

    admin, member_a = principal(billed, "admin"), principal(billed, "a_member")
    built: list[str] = []
    for name in ("bill_cells", "budget_cells"):
        real = getattr(cost_tables, name)
        monkeypatch.setattr(costs, name, lambda rows, real=real, name=name: built.append(name) or real(rows))
    as_caller(admin, lambda: update(ALL, PERIOD))
    assert built == []  # nothing formatted before a grid asks
    first = as_caller(admin, lambda: rows_block(BILLS, FIRST, ALL, PERIOD))
    second = as_caller(admin, lambda: rows_block(BILLS, {"startRow": 1, "endRow": 2}, ALL, PERIOD))
    budgets = as_caller(admin, lambda: rows_block(BUDGETS, FIRST, ALL, PERIOD))
    assert built == ["bill_cells", "budget_cells"]  # each list once, then kept
    assert second["rowData"] == first["rowData"][1:2] and first["rowCount"] == 2
    assert {r["tenant"] for r in budgets["rowData"]} == {"tenant-a", "tenant-b"}
    assert sum(Decimal(r["billed"]) for r in first["rowData"]) == spend_summary(billed.session, admin, PERIOD).to_date
    # what the admin's callback kept is never a member's: theirs is built for them
    mine = as_caller(member_a, lambda: rows_block(BILLS, FIRST, ALL, PERIOD))["rowData"]
    assert mine and {r["tenant"] for r in mine} == {"tenant-a"}


def test_finance_grids_come_a_block_at_a_time_for_finance_roles_only(billed: World, as_caller, monkeypatch) -> None:  # noqa: ANN001
    from dash import no_update

    from dashboards.finance_data import tenant_charges
    from dashboards.pages import finance

    monkeypatch.setattr(finance, "console_context", lambda: SimpleNamespace(settings=SimpleNamespace(opencost_url=None)))
    finance_caller, member_a = principal(billed, "finance"), principal(billed, "a_member")
    charges = tenant_charges(billed.session, finance_caller, PERIOD)
    assert {c.tenant for c in charges} == {"tenant-a", "tenant-b"}
    outputs = as_caller(finance_caller, lambda: finance.update(PERIOD))
    grid = outputs[8].children  # the charges-by-tenant grid: no rows in the page itself
    assert grid.rowModelType == "infinite" and not getattr(grid, "rowData", None)
    by_billed = {**FIRST, "sortModel": [{"colId": "billed", "sort": "desc"}]}
    block = as_caller(finance_caller, lambda: finance.rows_block(finance.TENANTS, by_billed, PERIOD))
    assert block["rowCount"] == 2
    assert [r["billed"] for r in block["rowData"]] == [str(c.total) for c in sorted(charges, key=lambda c: -c.total)]
    assert sum(Decimal(r["billed"]) for r in block["rowData"]) == sum(c.total for c in charges)
    second = as_caller(finance_caller, lambda: finance.rows_block(finance.TENANTS, {**by_billed, "startRow": 1}, PERIOD))
    assert second["rowData"] == block["rowData"][1:]
    for table in (finance.TENANTS, finance.RECONCILIATION):  # a tenant role gets nothing, kept or not
        assert as_caller(member_a, lambda: finance.rows_block(table, FIRST, PERIOD)) is no_update
