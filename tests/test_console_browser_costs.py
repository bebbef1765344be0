"""The costs and finance pages in a real browser (Debian Chromium through Playwright) against the
real app: bills made by metering's own bills run, downloads through the console's routes, and a
period closed from the finance page."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from collectors.models import K8sAllocation, OpenCostAllocation
from fleet.models import Gpu, Node
from fleet.provisioning.fake import FakeDriver
from fleet.tenancy_models import Lease
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.models import Tenant, User
from kiln.roles import Role
from kiln.tokens import issue_token
from kiln.users import UserCreate, create_user
from metering import skus
from metering.bills import FINALISED, run_period
from metering.budgets import BudgetCreate, check_alerts, create_budget
from metering.models import Bill
from metering.periods import next_period, period_bounds, period_of
from metering.price_cards import PriceCardCreate, create_card
from tests.browser import (
    ARTIFACTS,
    PASSWORD,
    ConsoleErrors,
    running_console,
    screenshot,
    seed_fleet,
    sign_in,
    wait_for_charts,
)

TENANT_B_WORDS = ("tenant-b", "Tenant B", "bob", "gpu-b01", "ns-b")
BLANK_CHART_PNG_BYTES = 8_000
SYSTEM = Principal.system("test")


class CostConsole:
    """The running app, the browser, and what the tests look up: periods, bills, API tokens."""

    def __init__(self, base_url: str, browser: Any, engine: Any, previous: str, current: str, tokens: dict[str, str]):
        self.base_url, self.browser, self.engine = base_url, browser, engine
        self.previous, self.current, self.tokens = previous, current, tokens

    def page_as(self, username: str, path: str) -> tuple[Any, ConsoleErrors]:
        """A fresh browser context signed in as `username`, on `path`."""
        page = self.browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()
        errors = ConsoleErrors(page)
        sign_in(page, self.base_url, username, PASSWORD, path)
        page.wait_for_url(f"{self.base_url}{path}")
        return page, errors

    def bill(self, tenant: str, period: str) -> Bill:
        """A tenant's bill of a period, read fresh."""
        with Session(self.engine) as session:
            return session.exec(select(Bill).join(Tenant, Tenant.id == Bill.tenant_id)
                                .where(Tenant.slug == tenant, Bill.period == period)).one()

    def api(self, username: str, path: str) -> Any:
        """GET an API path as `username` (bearer token)."""
        response = httpx.get(f"{self.base_url}{path}", headers={"Authorization": f"Bearer {self.tokens[username]}"})
        response.raise_for_status()
        return response.json()


def seed_costs(session: Session, now: datetime) -> tuple[str, str]:
    """Price cards, last month's leases and Kubernetes usage, OpenCost's view of it, a budget, a
    finance user, and both periods' bills through metering's bills run. Returns (previous, current)."""
    current = period_of(now)
    previous = period_of(period_bounds(current)[0] - timedelta(days=1))
    start = period_bounds(previous)[0]
    session.exec(update(Node).values(created_at=start - timedelta(days=30)))  # the fleet existed all month: idle cost
    for rc in set(session.exec(select(Node.resource_class)).all()):
        create_card(session, SYSTEM, PriceCardCreate(sku=skus.node_hour(rc), unit_price="1.50", currency="EUR",
                                                     effective_from=start - timedelta(days=60)))
    for model in set(session.exec(select(Gpu.model)).all()):
        create_card(session, SYSTEM, PriceCardCreate(sku=skus.gpu_hour(model), unit_price="2.25", currency="EUR",
                                                     effective_from=start - timedelta(days=60)))
    ids = dict(session.exec(select(Node.name, Node.id)).all())
    tenants = dict(session.exec(select(Tenant.slug, Tenant.id)).all())
    for node, tenant, first_day, days in (("gpu-a01", "tenant-a", 1, 5), ("gpu-b01", "tenant-b", 2, 9)):
        session.add(Lease(tenant_id=tenants[tenant], node_id=ids[node], starts_at=start + timedelta(days=first_day - 1),
                          ends_at=start + timedelta(days=first_day - 1 + days), created_by="test"))
    for namespace, tenant, uid in (("ns-a", "tenant-a", "uid-a"), ("ns-b", "tenant-b", "uid-b")):
        session.add(K8sAllocation(namespace=namespace, tenant_slug=tenant, pod=f"{namespace}-train", pod_uid=uid, node_name="gpu-free1",
                                  resource="nvidia.com/gpu", quantity=Decimal(1), starts_at=start + timedelta(days=10),
                                  ends_at=start + timedelta(days=10, hours=20 if tenant == "tenant-a" else 7)))
        session.add(OpenCostAllocation(namespace=namespace, window_start=start + timedelta(days=10),
                                       window_end=start + timedelta(days=11), gpu_hours=Decimal(18), total_cost=Decimal("41.20")))
    create_user(session, SYSTEM, UserCreate(username="fiona", role=Role.FINANCE, password=PASSWORD))
    session.commit()
    create_budget(session, SYSTEM, BudgetCreate(tenant="tenant-a", name="tenant-a monthly", amount=Decimal(400), currency="EUR"))
    create_budget(session, SYSTEM, BudgetCreate(tenant="tenant-b", name="tenant-b monthly", amount=Decimal(900), currency="EUR"))
    for period in (previous, current):
        run_period(session, SYSTEM, period, policy="platform", now=now)
        check_alerts(session, SYSTEM, period)
    session.commit()
    return previous, current


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CostConsole]:
    driver = FakeDriver(delay=0.05)

    def seed(session: Session, engine: Any, settings: Any) -> tuple:
        seed_fleet(session, engine, settings, driver)
        previous, current = seed_costs(session, utcnow())
        tokens = {name: issue_token(session, SYSTEM, session.exec(select(User).where(User.username == name)).one(), days=1).token
                  for name in ("alice", "fiona")}
        session.commit()
        return previous, current, tokens

    with running_console(tmp_path_factory.mktemp("console-costs"), driver, seed) as running:
        previous, current, tokens = running.seeded
        yield CostConsole(running.base_url, running.browser, running.engine, previous, current, tokens)


def _charts_have_marks(page: Any, minimum: int) -> None:
    drawn = wait_for_charts(page, minimum)
    assert len(drawn) >= minimum
    for chart in drawn:  # seeded data covers every chart: marks, not an empty-state annotation
        assert chart["marks"] > 0 and chart["width"] > 200, chart
    for graph in page.locator(".dash-graph").all():  # a blank chart's PNG is ~2 KB
        assert len(graph.screenshot()) > BLANK_CHART_PNG_BYTES


def _b_leaks(page: Any, b_total: Decimal) -> list[str]:
    content = page.content()  # whole words: AG Grid's markup says "combobox"; the total as shown and as grids hold it
    words = (*TENANT_B_WORDS, _money(b_total), str(b_total))
    return [word for word in words if re.search(rf"(?<![\w.,]){re.escape(word)}(?![\w])", content)]


def _money(amount: Any) -> str:
    return f"{Decimal(amount):,.2f}"


def _choose(page: Any, dropdown: str, label: str) -> None:
    page.click(f"#{dropdown}")
    page.get_by_role("option", name=label, exact=True).click()


@pytest.mark.parametrize("who,path,charts", [("alice", "/costs", 3), ("ops-admin", "/costs", 3), ("fiona", "/finance", 4)])
def test_cost_pages_render_with_drawn_charts_and_no_console_errors(console: CostConsole, who: str, path: str, charts: int) -> None:
    page, errors = console.page_as(who, path)
    if path == "/costs":
        page.wait_for_selector("#costs-bill-table .ag-cell")
        page.wait_for_selector("#emissions #stat-kg-co2e")  # energy and emissions beside cost
        assert (page.locator("#stat-idle-kwh").count() == 1) == (who == "ops-admin")  # idle energy: global roles
    else:
        page.wait_for_selector("#finance-tenant-table .ag-cell")
    _charts_have_marks(page, charts)
    by_sku = page.inner_text("#costs-by-sku" if path == "/costs" else "#finance-by-sku")
    assert "GPU-hour · " in by_sku and "gpu-hour:" not in by_sku  # SKUs by name
    assert screenshot(page, f"{who}-{path.strip('/')}").stat().st_size > 30_000
    assert "Traceback" not in page.content()
    assert errors.messages == []
    page.context.close()


def test_a_tenants_cost_page_and_files_never_show_another_tenant(console: CostConsole) -> None:
    b_total = Decimal(console.bill("tenant-b", console.previous).total).quantize(Decimal("0.01"))
    mine = console.bill("tenant-a", console.previous)
    page, errors = console.page_as("alice", "/costs")
    page.wait_for_selector("#costs-bill-table .ag-cell")
    _choose(page, "costs-period", console.previous)
    page.wait_for_selector(f"#costs-bill-table a[href='/costs/bills/{mine.id}']")
    wait_for_charts(page, 3)
    assert "tenant-a" in page.inner_text("#costs-bill-table") and _b_leaks(page, b_total) == []
    page.click("#costs-tenant")
    assert _b_leaks(page, b_total) == []  # not even among the tenant choices
    page.keyboard.press("Escape")
    page.click(f"#costs-bill-table a[href='/costs/bills/{mine.id}']")
    page.wait_for_url(f"{console.base_url}/costs/bills/{mine.id}")
    page.wait_for_selector("#bill-lines td")
    screenshot(page, "tenant-a-bill")
    assert _b_leaks(page, b_total) == []
    files = []
    for link in ("#bill-download-csv", "#bill-download-focus"):
        with page.expect_download() as download:
            page.click(link)
        files.append(Path(download.value.path()).read_text())
    own_export = page.request.get(f"{console.base_url}/downloads/focus/{console.previous}.csv")  # a finance export, scoped
    assert own_export.status == 200
    files.append(own_export.text())
    for text in files:
        assert "tenant-a" in text and [w for w in (*TENANT_B_WORDS, str(b_total)) if w in text] == []
    theirs = console.bill("tenant-b", console.previous)
    assert page.request.get(f"{console.base_url}/downloads/bills/{theirs.id}.csv").status == 404
    assert page.request.get(f"{console.base_url}/downloads/bills/{theirs.id}.focus.csv").status == 404
    page.goto(f"{console.base_url}/costs/bills/{theirs.id}")
    page.wait_for_selector("#bill-missing")
    assert _b_leaks(page, b_total) == []
    response = page.goto(f"{console.base_url}/finance")
    assert response.status == 403
    page.wait_for_selector("#forbidden-title")
    refused = [m for m in errors.messages if "status of 403" in m]  # Chromium logs the page's own 403
    assert len(refused) == 1 and [m for m in errors.messages if m not in refused] == []
    page.context.close()


def test_an_admin_picking_a_tenant_gets_that_tenants_rows_in_the_server_paged_grids(console: CostConsole) -> None:
    """The bill and budget grids ask the server for their rows (dashboards.cost_tables): picking one
    tenant asks again, and only that tenant's rows come back."""
    a_bill, b_bill = console.bill("tenant-a", console.previous), console.bill("tenant-b", console.previous)
    page, errors = console.page_as("ops-admin", "/costs")
    page.wait_for_selector("#budget-table .ag-cell")
    _choose(page, "costs-period", console.previous)
    page.wait_for_selector(f"#costs-bill-table a[href='/costs/bills/{b_bill.id}']")
    assert "tenant-b monthly" in page.inner_text("#budget-table")
    page.click("#costs-tenant")
    page.get_by_role("option", name=re.compile(r"\(tenant-a\)$")).click()
    page.wait_for_selector(f"#costs-bill-table a[href='/costs/bills/{b_bill.id}']", state="detached")
    page.wait_for_selector(f"#costs-bill-table a[href='/costs/bills/{a_bill.id}']")
    page.wait_for_function("!document.querySelector('#budget-table').innerText.includes('tenant-b')")
    assert "tenant-a monthly" in page.inner_text("#budget-table") and "tenant-b" not in page.inner_text("#costs-bill-table")
    assert errors.messages == []
    page.context.close()


def test_a_downloaded_bill_totals_what_the_api_says_and_drills_down(console: CostConsole) -> None:
    bill = console.bill("tenant-a", console.previous)
    api = console.api("alice", f"/api/v1/bills/{bill.id}")
    page, errors = console.page_as("alice", f"/costs/bills/{bill.id}")
    page.wait_for_selector("#bill-lines td")
    assert page.inner_text("#bill-total") == f"€{_money(api['total'])}" and api["currency"] == "EUR"
    headers = page.locator("#bill-lines th").all_inner_texts()
    assert {"list unit price", "contracted unit price", "discount"} <= set(headers)
    gpu_row = page.locator("#bill-lines tr", has_text="GPU-hour · ").first.inner_text()
    assert "€2.25" in gpu_row and "0.00 %" in gpu_row  # tenant A has no discount: list = contracted
    assert page.is_disabled("#bill-lines-prev") and page.is_disabled("#bill-lines-next")  # one page of lines
    assert page.evaluate("() => getComputedStyle(document.querySelector('#bill-lines-prev')).cursor") == "not-allowed"
    with page.expect_download() as download:
        page.click("#bill-download-csv")
    rows = list(csv.DictReader(Path(download.value.path()).open()))
    download.value.save_as(ARTIFACTS / f"bill-{bill.id}.csv")
    assert rows[-1]["kind"] == "total" and Decimal(rows[-1]["contracted_cost"]) == Decimal(api["total"])
    assert sum(Decimal(r["contracted_cost"]) for r in rows[:-1]) == Decimal(api["total"])
    with page.expect_download() as download:
        page.click("#bill-download-focus")
    focus = list(csv.DictReader(Path(download.value.path()).open()))
    assert {r["x_BillId"] for r in focus} == {str(bill.id)}
    assert sum(Decimal(r["BilledCost"]) for r in focus) == Decimal(api["total"])
    gpu_line = next(line for line in api["lines"] if line["sku"].startswith("gpu-hour:"))
    page.click(f"button[id*='\"line\":{gpu_line['id']},']")
    page.wait_for_selector("#line-usage-title")
    resources = page.inner_text("#line-usage-resources")
    assert "gpu-a01" in resources and "k8s:ns-a" in resources and "gpu-b01" not in resources
    screenshot(page, "tenant-a-bill-drill-down")
    # 5 days of one GPU and 20 hours of ns-a: 140 hourly records, 48 a page
    assert page.inner_text("#line-usage-status") == "page 1 of 3" and page.is_disabled("#line-usage-prev")
    first_hour = page.locator("#line-usage-hours tbody tr").first.inner_text()
    page.click("#line-usage-next")
    page.wait_for_selector("#line-usage-status:has-text('page 2 of 3')")
    assert page.locator("#line-usage-hours tbody tr").first.inner_text() != first_hour
    assert not page.is_disabled("#line-usage-prev")
    assert errors.messages == []
    page.context.close()


def test_finance_reads_no_configuration_internals_and_admins_get_the_setup_hint(console: CostConsole) -> None:
    page, errors = console.page_as("fiona", "/finance")
    page.wait_for_selector("#finance-tenant-table .ag-cell")
    _choose(page, "finance-period", f"{console.current} (running)")  # no OpenCost allocation this month
    page.wait_for_selector("#finance-reconciliation:has-text('OpenCost is not connected')")
    screenshot(page, "finance-opencost-not-connected")
    text = page.inner_text("body")  # what the reader sees (the markup has SVG namespace URLs)
    assert [word for word in ("KILN_", "kiln worker", "kiln bills", "http://", "https://") if word in text] == []
    assert "KILN_" not in page.content()
    assert page.is_disabled("#finance-close")  # the running period cannot be closed: and it looks it
    style = page.evaluate("() => { const s = getComputedStyle(document.querySelector('#finance-close'));"
                          " return [s.cursor, Number(s.opacity)]; }")
    assert style[0] == "not-allowed" and style[1] < 0.6
    assert errors.messages == []
    page.context.close()
    page, errors = console.page_as("ops-admin", "/finance")
    page.wait_for_selector("#finance-tenant-table .ag-cell")
    _choose(page, "finance-period", f"{console.current} (running)")
    page.wait_for_selector("#finance-reconciliation:has-text('KILN_OPENCOST_URL')")  # the admin's view says how
    assert errors.messages == []
    page.context.close()


def test_finance_closes_the_period_and_the_bill_becomes_finalised(console: CostConsole) -> None:
    page, errors = console.page_as("fiona", "/finance")
    # the grid's cells exist a moment before they are shown (innerText leaves hidden ones out): wait for the text
    page.wait_for_selector("#finance-tenant-table .ag-row:has-text('draft')")
    assert console.previous in page.inner_text("#finance-period")  # the last period, ready to close
    first = page.inner_text("#finance-tenant-table .ag-center-cols-container .ag-row[row-index='0']")
    assert "tenant-b" in first and "1311.75" in first  # largest bill first: sorted as numbers, not as text
    assert not page.is_disabled("#finance-close")
    for link in ("#export-focus-csv", "#export-chargeback"):
        with page.expect_download() as download:
            page.click(link)
        assert "tenant-b" in Path(download.value.path()).read_text()  # finance sees every tenant
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#finance-close")
    page.wait_for_selector("#finance-close-message:has-text('closed')")
    assert page.inner_text("#finance-close-message") == f"{console.previous} closed: 2 bill(s) finalised."
    page.wait_for_selector("#finance-tenant-table:has-text('finalised')")
    screenshot(page, "finance-closed")
    assert "draft" not in page.inner_text("#finance-tenant-table")
    page.wait_for_selector("#finance-close[disabled]")
    bill = console.bill("tenant-a", console.previous)
    assert bill.status == FINALISED and bill.finalised_by == "fiona"
    assert console.api("alice", f"/api/v1/bills/{bill.id}")["status"] == FINALISED
    assert next_period(console.previous) == console.current
    assert errors.messages == []
    page.context.close()
