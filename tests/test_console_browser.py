"""The console in a real browser: Debian Chromium driven by Playwright against the real app
(uvicorn on loopback, migrated SQLite, fake-driver fleet with collector history)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from plotly.offline import get_plotlyjs_version
from sqlmodel import Session, col, select

from collectors.base import Sample, TargetResult
from collectors.models import K8sAllocation
from collectors.store import persist_results
from dashboards.session import SESSION_COOKIE, ConsoleSession, SessionCodec
from dashboards.time_controls import REFRESH_SECONDS
from fleet.models import Gpu, Node
from fleet.provisioning.fake import FakeDriver
from kiln.db import utcnow
from tests.browser import (
    PASSWORD,
    TENANT_A_NODES,
    TENANT_B_NODES,
    ConsoleErrors,
    fleet_seeded,
    running_console,
    screenshot,
    sign_in,
    wait_for_charts,
)
from tests.conftest import TEST_SECRET_KEY

ADMIN_PAGES = {"fleet": ("/fleet", 4), "vdcs": ("/vdcs", 1), "usage": ("/usage", 4), "node": ("/nodes/gpu-a01", 7)}
TENANT_B_WORDS = ("tenant-b", "Tenant B", "bob", *TENANT_B_NODES)
BLANK_CHART_PNG_BYTES = 8_000


class Console:
    """The running app, its fake driver, and the browser."""

    def __init__(self, base_url: str, browser: Any, engine: Any, driver: FakeDriver, codec: SessionCodec):
        self.base_url, self.browser, self.engine, self.driver, self.codec = base_url, browser, engine, driver, codec

    def page_as(self, username: str, path: str) -> tuple[Any, ConsoleErrors]:
        """A fresh browser context signed in as `username`, on `path`."""
        page = self.browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        errors = ConsoleErrors(page)
        sign_in(page, self.base_url, username, PASSWORD, path)
        page.wait_for_url(f"{self.base_url}{path}")
        return page, errors


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    driver = FakeDriver(delay=0.3)
    with running_console(tmp_path_factory.mktemp("console"), driver,
                         fleet_seeded(driver)) as running:
        codec = SessionCodec(TEST_SECRET_KEY, running.settings.console_session_hours * 3600)
        yield Console(running.base_url, running.browser, running.engine, driver, codec)


def test_sign_in_wrong_password_and_sign_out(console: Console) -> None:
    page = console.browser.new_page()
    page.goto(f"{console.base_url}/vdcs")
    assert page.url.startswith(f"{console.base_url}/signin")
    assert "Sign in to use the Kiln console" in page.inner_text("#signin-notice")
    page.fill("#username", "ops-admin")
    page.fill("#password", "not-the-password")
    page.click("#signin-button")
    assert page.inner_text("#signin-notice") == "Wrong username or password."
    assert page.input_value("#username") == "ops-admin" and page.input_value("#password") == ""
    page.fill("#password", PASSWORD)
    page.click("#signin-button")
    page.wait_for_url(f"{console.base_url}/vdcs")  # back where the gate stopped us
    page.wait_for_selector("#vdc-table")
    assert page.inner_text("#current-user") == "ops-admin"
    cookie = next(c for c in page.context.cookies() if c["name"] == SESSION_COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.click("#signout-button")
    page.wait_for_url("**/signin?reason=signedout")
    assert page.inner_text("#signin-notice") == "You have signed out."
    assert SESSION_COOKIE not in {c["name"] for c in page.context.cookies()}
    page.goto(f"{console.base_url}/vdcs")
    assert page.url.startswith(f"{console.base_url}/signin")
    page.context.close()


@pytest.mark.parametrize("name", sorted(ADMIN_PAGES))
def test_every_page_renders_with_drawn_charts_and_no_console_errors(console: Console, name: str) -> None:
    path, charts = ADMIN_PAGES[name]
    page, errors = console.page_as("ops-admin", path)
    drawn = wait_for_charts(page, charts)
    assert screenshot(page, f"admin-{name}").stat().st_size > 30_000
    assert len(drawn) >= charts
    for chart in drawn:  # seeded data covers every chart: marks, not an empty-state annotation
        assert chart["marks"] > 0 and chart["width"] > 200, chart
    for graph in page.locator(".dash-graph").all():  # and the pixels say so: a blank 600×300 PNG is ~2 KB
        assert len(graph.screenshot()) > BLANK_CHART_PNG_BYTES
    assert "Traceback" not in page.content()
    assert errors.messages == []
    scripts = page.evaluate("() => performance.getEntriesByType('resource').map(e => e.name)")
    assert not [url for url in scripts if "plotly.min.js" in url]  # the vendored basic bundle drew every chart
    # the page's layout arrived with its charts filled (dashboards.components.prefilled): no second round trip,
    # but for the fleet's node table and the VDCs' grants, whose rows come a page at a time (dashboards.server_grid)
    assert len([url for url in scripts if "/_dash-update-component" in url]) == (2 if name in ("fleet", "vdcs") else 1)
    assert page.evaluate("() => window.Plotly.version") == get_plotlyjs_version()
    page.context.close()


def _b_words(content: str) -> list[str]:
    """Tenant B's names in the page, as whole words (AG Grid's markup says "combobox")."""
    return [word for word in TENANT_B_WORDS if re.search(rf"(?<![\w-]){re.escape(word)}(?![\w])", content)]


def test_tenant_pages_never_show_another_tenants_names(console: Console) -> None:
    page, errors = console.page_as("alice", "/usage")
    wait_for_charts(page, 3)
    page.wait_for_selector("#usage-allocation-table .ag-cell")
    screenshot(page, "tenant-a-usage")
    allocation = page.inner_text("#usage-allocation-table")
    assert "Cost of idle" in allocation and all(node in allocation for node in TENANT_A_NODES)
    assert re.match(r"^\d+ %$", page.inner_text("#stat-efficiency")) and re.match(r"^\d+ %$", page.inner_text("#stat-coverage"))
    assert _b_words(page.content()) == []
    for tab, ready in (("running", "#running-nodes .ag-cell"), ("quotas", "#quota-table"),
                       ("namespace", "#usage-namespace-table")):
        page.click(f"#usage-details-{tab}")  # only the chosen tab's table is drawn, filled by a callback
        page.wait_for_selector(ready)
        assert page.get_attribute(f"#usage-details-{tab}", "aria-selected") == "true"
        assert page.get_attribute("#usage-details-lease", "aria-selected") == "false"
        assert page.query_selector("#usage-allocation-table") is None
        if tab == "running":
            text = page.inner_text("body")
            assert all(node in text for node in TENANT_A_NODES)
        assert _b_words(page.content()) == []
    page.click("#usage-tenant")
    assert _b_words(page.content()) == []  # not even among the tenant choices
    for node in TENANT_A_NODES:  # gpu-a02 was tenant B's before: its history must not say so
        page.goto(f"{console.base_url}/nodes/{node}")
        wait_for_charts(page, 3)
        screenshot(page, f"tenant-a-node-{node}")
        assert page.inner_text("#node-title") == node
        assert _b_words(page.content()) == []
        assert "ipmi://" not in page.content()  # BMC details are for infra admins
    page.goto(f"{console.base_url}/nodes/{TENANT_B_NODES[0]}")
    page.wait_for_selector("#node-missing")
    assert "Node not found" in page.inner_text("#node-missing")
    assert errors.messages == []
    page.context.close()


def test_tenant_on_an_admin_url_gets_a_403_page(console: Console) -> None:
    page, errors = console.page_as("alice", "/usage")
    for path in ("/fleet", "/vdcs"):
        response = page.goto(f"{console.base_url}{path}")
        assert response.status == 403
        page.wait_for_selector("#forbidden-title")
        assert page.inner_text("#forbidden-title") == "403 — Forbidden"
        assert "Traceback" not in page.content() and "gpu-b01" not in page.content()
    screenshot(page, "tenant-a-forbidden")
    refused = [m for m in errors.messages if "status of 403" in m]  # Chromium logs the page's own 403
    assert len(refused) == 2 and [m for m in errors.messages if m not in refused] == []
    page.context.close()


def _choose(page: Any, dropdown: str, label: str) -> None:
    page.click(f"#{dropdown}")
    page.get_by_role("option", name=label).click()


def test_bulk_action_reaches_the_fake_driver_with_per_node_results(console: Console) -> None:
    page, errors = console.page_as("ops-admin", "/fleet")
    page.wait_for_selector(".ag-row[row-id='gpu-free1']")
    _choose(page, "bulk-action", "Deploy an image")
    page.click("#bulk-run")
    page.wait_for_selector("#bulk-message:has-text('Select at least one node')")
    for name in ("gpu-free1", "gpu-free2", "gpu-free3"):
        page.locator(f".ag-center-cols-container .ag-row[row-id='{name}'] input[type=checkbox], "
                     f".ag-pinned-left-cols-container .ag-row[row-id='{name}'] input[type=checkbox]").first.check()
    page.click("#bulk-run")  # deploy without an image: explained next to the field, nothing started
    page.wait_for_selector("#bulk-image-url-error:has-text('Required to deploy')")
    _choose(page, "bulk-action", "Provide (clean → available)")
    page.click("#bulk-run")
    page.wait_for_selector("#bulk-summary:has-text('3 of 3 finished')", timeout=20000)
    screenshot(page, "admin-fleet-bulk-provide")
    assert page.inner_text("#bulk-summary") == "3 of 3 finished: 2 succeeded, 1 failed"
    assert "succeeded" in page.inner_text("#op-gpu-free1") and "available" in page.inner_text("#op-gpu-free1")
    assert "fake driver: provide failed" in page.inner_text("#op-gpu-free3")
    with Session(console.engine) as session:  # the operations reached the driver: its own state says so
        ids = dict(session.exec(select(Node.name, Node.external_id)).all())
    backend = {b.external_id: b.provision_state.value for b in console.driver.list_all()}
    assert [backend[ids[n]] for n in ("gpu-free1", "gpu-free2", "gpu-free3")] == ["available", "available", "clean failed"]
    page.wait_for_selector(".ag-row[row-id='gpu-free1'] [col-id='provision_state']:has-text('available')")
    assert errors.messages == []
    page.context.close()


def _expired_cookie(console: Console) -> dict[str, Any]:
    with Session(console.engine) as session:
        from kiln.models import User

        user = session.exec(select(User).where(User.username == "ops-admin")).one()
    stale = ConsoleSession(kind="local", username="ops-admin", user_id=user.id, expires_at=time.time() - 1)
    return {"name": SESSION_COOKIE, "value": console.codec.seal(stale), "url": console.base_url}


def test_expired_session_goes_back_to_sign_in_with_a_message(console: Console) -> None:
    page, _ = console.page_as("ops-admin", "/usage")
    wait_for_charts(page, 3)
    page.context.add_cookies([_expired_cookie(console)])
    _choose(page, "usage-range", "Last 30 days")  # a callback: the server answers 401, the page goes to sign-in
    page.wait_for_url("**/signin?reason=expired**")
    assert page.inner_text("#signin-notice") == "Your session has expired. Sign in again."
    page.goto(f"{console.base_url}/fleet")  # and a page load with the expired cookie
    assert "/signin?reason=expired" in page.url
    screenshot(page, "signin-expired")
    page.context.close()


class AttackerSite:
    """Another origin on loopback serving a page that posts to the console without the token."""

    def __init__(self, target: str):
        page = (f'<form id="f" method="post" action="{target}/signout"><input name="x" value="1"></form>'
                "<script>document.getElementById('f').submit()</script>").encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_cross_site_post_without_the_token_is_refused(console: Console) -> None:
    page, _ = console.page_as("ops-admin", "/vdcs")
    attacker = AttackerSite(console.base_url)
    with page.expect_response(f"{console.base_url}/signout") as refused:
        page.goto(attacker.url)
    assert refused.value.status == 403
    assert "CSRF" in refused.value.text() or "cross-origin" in refused.value.text()
    page.goto(f"{console.base_url}/vdcs")  # still signed in: the forged sign-out did nothing
    page.wait_for_selector("#vdc-table")
    # Same origin but without the header (a plain XHR, not the console's fetch): refused too.
    status = page.evaluate("""() => new Promise(done => { const x = new XMLHttpRequest();
        x.open('POST', '/_dash-update-component'); x.setRequestHeader('Content-Type', 'application/json');
        x.onload = () => done(x.status); x.send('{}'); })""")
    assert status == 403
    attacker.server.shutdown()
    page.context.close()



def _power_x_range(page: Any) -> list[str]:
    """The first and last time of the fleet power chart's line."""
    return page.evaluate("() => { const x = document.querySelector('#fleet-power .js-plotly-plot').data[0].x;"
                         " return [String(x[0]), String(x[x.length - 1])]; }")


@pytest.mark.parametrize("path,prefix", [("/fleet", "fleet"), ("/nodes/gpu-a01", "node")])
def test_live_pages_take_custom_dates_say_when_they_were_read_and_refresh_themselves(
        console: Console, path: str, prefix: str) -> None:
    page, errors = console.page_as("ops-admin", path)
    wait_for_charts(page, 3)
    stamp = re.compile(r"^last updated \d\d:\d\d:\d\d UTC$")
    first = page.inner_text(f"#{prefix}-updated")
    assert stamp.match(first), first
    today = datetime.now(UTC).date()
    page.wait_for_timeout(1100)  # the next reading is a second later at least
    for field, day in ((f"#{prefix}-from", today - timedelta(days=1)), (f"#{prefix}-to", today)):
        page.fill(field, day.isoformat())
        page.keyboard.press("Enter")
    page.wait_for_selector(f"#{prefix}-range:has-text('Custom dates')")
    page.wait_for_function(f"() => document.querySelector('#{prefix}-updated').innerText !== {first!r}")
    wait_for_charts(page, 3)
    if prefix == "fleet":  # yesterday and today up to now: the seeded 6 hours of power are inside
        start, end = _power_x_range(page)
        assert start[:10] >= (today - timedelta(days=1)).isoformat() and end[:10] <= today.isoformat()
        assert page.locator("#fleet-stats #stat-nodes").inner_text() == "6"
    screenshot(page, f"{prefix}-custom-range")
    second = page.inner_text(f"#{prefix}-updated")
    page.clock.install()  # the page's timers from here on run on a clock the test moves (time still flows)
    page.get_by_text(f"auto-refresh every {REFRESH_SECONDS} s").click()  # off by default; on: a tick re-reads the page
    page.wait_for_timeout(1100)
    assert page.inner_text(f"#{prefix}-updated") == second  # switching it on reads nothing by itself
    page.clock.fast_forward(REFRESH_SECONDS * 1000)  # one tick, without waiting 30 s for it
    page.wait_for_function(f"() => document.querySelector('#{prefix}-updated').innerText !== {second!r}",
                           timeout=15_000)
    assert stamp.match(page.inner_text(f"#{prefix}-updated"))
    assert errors.messages == []
    page.context.close()


def test_usage_page_shows_each_tenant_the_efficiency_of_its_own_namespaces(console: Console) -> None:
    """Pods of both tenants hold GPUs for the last two hours, the GPU exporter labelling each GPU's
    utilisation with the pod's namespace (30 % for tenant A's, 90 % for tenant B's)."""
    now = utcnow()
    with Session(console.engine) as session:
        uuids = dict(session.exec(select(Node.name, Gpu.uuid).join(Gpu, col(Gpu.node_id) == Node.id)
                                  .where(col(Node.name).in_(["gpu-a01", "gpu-b01"])).order_by(Gpu.index)).all())
        for namespace, tenant, node in (("alpha-live", "tenant-a", "gpu-a01"), ("bravo-live", "tenant-b", "gpu-b01")):
            session.add(K8sAllocation(namespace=namespace, tenant_slug=tenant, pod=f"{namespace}-0", pod_uid=f"uid-{namespace}",
                                      node_name=node, resource="nvidia.com/gpu", quantity=Decimal(1),
                                      starts_at=now - timedelta(hours=2), ends_at=None))
        for step in range(24, 0, -1):
            ts = now - timedelta(minutes=5 * step)
            samples = [Sample("dcgm", uuids[node], "gpu_util", percent, "percent", {"namespace": namespace, "pod": f"{namespace}-0"}, ts)
                       for node, namespace, percent in (("gpu-a01", "alpha-live", 30.0), ("gpu-b01", "bravo-live", 90.0))]
            persist_results(session, "dcgm", [TargetResult("prometheus", ok=True, samples=samples)], now=ts)
        session.commit()
    cells = "() => Array.from(document.querySelectorAll('#usage-namespace-table .ag-row')).map(r => [r.querySelector('[col-id=namespace]').innerText, r.querySelector('[col-id=efficiency]').innerText])"
    page, errors = console.page_as("alice", "/usage")
    page.click("#usage-details-namespace")
    page.wait_for_selector("#usage-namespace-table .ag-cell")
    assert page.evaluate(cells) == [["alpha-live", "30.0"]]
    assert "bravo-live" not in page.content() and _b_words(page.content()) == []
    page.context.close()
    page, admin_errors = console.page_as("ops-admin", "/usage")
    page.click("#usage-details-namespace")
    page.wait_for_selector("#usage-namespace-table .ag-cell")
    assert sorted(page.evaluate(cells)) == [["alpha-live", "30.0"], ["bravo-live", "90.0"]]
    screenshot(page, "admin-usage-namespaces")
    assert errors.messages == [] and admin_errors.messages == []
    page.context.close()
