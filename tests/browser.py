"""Browser-test harness: the real Kiln app on a loopback port, driven by Debian's Chromium.

Playwright for Python drives `/usr/bin/chromium` (executable_path; no browser download, see
shared/PEERS.md). A missing Chromium or Playwright goes through `missing_peer`, so CI
(KILN_REQUIRE_PEERS=1) fails instead of skipping. Screenshots go to `test-artifacts/console/` (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers.harness import missing_peer

ARTIFACTS = Path(__file__).parents[1] / "test-artifacts" / "console"  # git-ignored
AXE_VERSION = "4.14.1"  # tests/peers/chromium.sh installs this axe-core from npm
AXE_FAILING_IMPACTS = ("serious", "critical")
# axe.run's violations, reduced to what a failure message needs: rule, impact, help, the nodes' selectors.
AXE_RUN_JS = """async ([impacts, rules]) => {
  const options = {resultTypes: ['violations']};
  if (rules) options.runOnly = {type: 'rule', values: rules};
  const result = await window.axe.run(document, options);
  return result.violations.filter(v => impacts.includes(v.impact)).map(v => ({
    id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map(n => n.target.join(' ')).slice(0, 8)}));
}"""
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
# A chart is drawn when it has marks (lines, bars, points) or says why it has none (annotation).
CHARTS_DRAWN_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(el => ({
  id: el.parentElement ? el.parentElement.id : '',
  marks: el.querySelectorAll('.scatterlayer path.js-line, .barlayer path, .scatterlayer .point').length,
  annotation: (el.querySelector('.annotation-text') || {}).textContent || '',
  width: el.getBoundingClientRect().width,
}))"""


def chromium_path() -> str:
    """Debian's Chromium binary (`apt-get install chromium`), or a missing-peer skip/failure."""
    path = os.environ.get("KILN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        missing_peer("chromium", "no chromium binary: run `bash tests/peers/chromium.sh install`")
    return path


def launch_browser(playwright: Any) -> Any:
    """Headless Chromium through Playwright with the flags PEERS.md lists."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


def launch_profile(playwright: Any, user_data_dir: Path, **options: Any) -> Any:
    """Headless Chromium with a persistent profile (disk cache, V8 code cache: a user's own browser,
    unlike `launch_browser`'s contexts, which are private windows); returns its one context."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=chromium_path(), args=CHROMIUM_ARGS, **options)


@contextmanager
def playwright_session() -> Iterator[Any]:
    """Playwright's sync API (the `test` extra installs the package; Chromium is a peer)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


def axe_script() -> Path:
    """axe-core's browser bundle as `tests/peers/chromium.sh install` leaves it, or a missing-peer skip/failure."""
    peers = Path(os.environ.get("KILN_PEERS_DIR") or Path(__file__).parents[1] / ".peers")
    path = peers / "axe-core" / "node_modules" / "axe-core" / "axe.min.js"
    if not path.is_file():
        missing_peer("axe-core", f"no {path}: run `bash tests/peers/chromium.sh install`")
    return path


def axe_violations(page: Any, impacts: tuple[str, ...] = AXE_FAILING_IMPACTS, rules: tuple[str, ...] | None = None
                   ) -> list[dict[str, Any]]:
    """Inject axe-core into `page` (once) and run every rule on it (or only `rules`, axe rule ids);
    the violations of `impacts`, each as {id, impact, help, targets (CSS selectors of up to 8
    offending nodes)}."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.add_script_tag(path=str(axe_script()))
        version = page.evaluate("() => window.axe.version")
        assert version == AXE_VERSION, f"axe-core {version} is installed, the tests pin {AXE_VERSION}"
    return page.evaluate(AXE_RUN_JS, [list(impacts), list(rules) if rules else None])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a loopback port (`port`, or a free one); yield its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="kiln-console-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start serving the Kiln app")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class RunningConsole:
    """A served console: its URL, a headless browser, the database, the settings."""

    base_url: str
    browser: Any
    engine: Any
    settings: Any
    seeded: Any  # what `seed` returned


@contextmanager
def running_console(data_dir: Path, driver: Any, seed: Callable[[Any, Any, Any], Any], *, port: int | None = None,
                    oidc: Callable[[Any], Any] | None = None, **settings_overrides: Any) -> Iterator[RunningConsole]:
    """The real app on a fresh migrated SQLite database in `data_dir` (dev mode: cookies over
    plain http), seeded by `seed(session, engine, settings)`, with the fake `driver` behind its fleet runtime,
    served on loopback (`port`, or a free one) and opened in Debian's Chromium. `settings_overrides` are
    further settings (e.g. `oidc_issuer`); `oidc(settings)`, when given, makes the app's OIDC verifier."""
    from sqlmodel import Session

    from fleet.provisioning.registry import Drivers
    from fleet.runtime import FleetRuntime
    from kiln.app import create_app
    from kiln.db import create_db_engine
    from kiln.schema import upgrade
    from kiln.settings import Settings
    from tests.conftest import TEST_SECRET_KEY

    settings = Settings(data_dir=data_dir, secret_key=TEST_SECRET_KEY, dev=True, **settings_overrides)
    engine = create_db_engine(settings.resolved_database_url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        seeded = seed(session, engine, settings)
    app = create_app(settings, engine=engine, oidc=oidc(settings) if oidc else None)
    app.state.fleet = FleetRuntime.build(settings, engine, drivers=Drivers(settings, fake=driver))
    try:
        with serving(app, port) as base_url, playwright_session() as playwright:
            browser = launch_browser(playwright)
            CONSOLE_BROWSERS.append(browser)
            try:
                yield RunningConsole(base_url, browser, engine, settings, seeded)
            finally:
                CONSOLE_BROWSERS.remove(browser)
                SHARED_CONTEXTS[:] = [c for c in SHARED_CONTEXTS if c.browser is not browser]
                browser.close()
    finally:
        engine.dispose()


CONSOLE_BROWSERS: list[Any] = []  # the browsers of the consoles running now (`running_console`)
SHARED_CONTEXTS: list[Any] = []  # contexts a module's tests share (`shared_context`), left open between tests


def shared_context(context: Any) -> Any:
    """Mark `context` as one the module's later tests use too: `tabs_opened_inside_closed` leaves it open."""
    SHARED_CONTEXTS.append(context)
    return context


@contextmanager
def tabs_opened_inside_closed() -> Iterator[None]:
    """Close, on leaving, the browser contexts (private windows with their tabs) opened inside on
    the running consoles' browsers, unless shared: a tab left open goes on running its scripts,
    taking CPU from every later test."""
    before = [context for browser in CONSOLE_BROWSERS for context in browser.contexts]
    try:
        yield
    finally:
        for browser in CONSOLE_BROWSERS:
            for context in browser.contexts:
                if not any(context is kept for kept in (*before, *SHARED_CONTEXTS)):
                    context.close()


class ConsoleErrors:
    """Collects a page's console errors and uncaught exceptions."""

    def __init__(self, page: Any):
        self.messages: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.messages.append(message.text))
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))


def sign_in(page: Any, base_url: str, username: str, password: str, path: str = "/") -> None:
    """Fill and submit the sign-in form for `path`."""
    page.goto(f"{base_url}/signin?next={path}")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#signin-button")


def wait_for_charts(page: Any, minimum: int, timeout_ms: int = 15000) -> list[dict[str, Any]]:
    """Wait until at least `minimum` Plotly charts are drawn on the page; return what each shows."""
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
        f".filter(el => el.querySelector('.main-svg')).length >= {minimum} && "
        "!document.querySelector('[data-dash-is-loading=\"true\"]')",
        timeout=timeout_ms,
    )
    page.wait_for_timeout(300)  # let the last callback's figure render
    return page.evaluate(CHARTS_DRAWN_JS)


def screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot kept as a test artifact; returns its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# --- the seeded fleet the browser tests look at ------------------------------------------

PASSWORD = "console-test-password"
TENANT_A_NODES = ("gpu-a01", "gpu-a02")
TENANT_B_NODES = ("gpu-b01",)
FREE_NODES = ("gpu-free1", "gpu-free2", "gpu-free3")  # gpu-free3 fails `provide` and its BMC is down
HISTORY_STEPS = 72  # 6 hours of 5-minute polls
BMC_OUTAGE_STEPS = (40, 34)  # gpu-free2's BMC fails the polls of these steps back (exclusive of the second)


def seed_fleet(session: Any, engine: Any, settings: Any, driver: Any) -> Any:
    """Tenants, users with passwords, fake-driver nodes, a VDC, leases, their usage records and 6 h
    of collector data.

    Everything goes through Kiln's own services (users, nodes, operations, VDCs, leases,
    and `collectors.store.persist_results` for health data), as the running system would."""
    from datetime import timedelta

    from fleet.leases import create_lease
    from fleet.nodes import create_node, list_nodes
    from fleet.operations import ActionParams, OperationRunner, plan_action
    from fleet.provisioning.actions import Action
    from fleet.provisioning.registry import Drivers
    from fleet.schemas import NodeCreate
    from fleet.tenancy_schemas import LeaseCreate, VdcCreate
    from fleet.vdcs import create_vdc
    from kiln.auth import Principal
    from kiln.db import utcnow
    from kiln.roles import Role
    from kiln.security import SecretBox
    from kiln.settings import resolve_secret_key
    from kiln.users import UserCreate, create_user
    from tests.factories import World
    from tests.fleet_helpers import node_payload

    world = World.build(session)
    system = Principal.system("test")
    for username, role, tenants in (("ops-admin", Role.INFRA_ADMIN, []), ("alice", Role.TENANT_MEMBER, ["tenant-a"]),
                                    ("bob", Role.TENANT_MEMBER, ["tenant-b"])):
        create_user(session, system, UserCreate(username=username, role=role, tenants=tenants, password=PASSWORD))
    drivers, box = Drivers(settings, fake=driver), SecretBox(resolve_secret_key(settings))
    for name in TENANT_A_NODES + TENANT_B_NODES + FREE_NODES:
        tags = ["train", "fake-fail-provide"] if name == "gpu-free3" else ["train"]
        create_node(session, system, NodeCreate(**node_payload(name=name, tags=tags)), drivers, box)
    session.commit()
    runner = OperationRunner(engine, drivers, box, timeout=30)
    for action, names in ((Action.MANAGE, None), (Action.PROVIDE, TENANT_A_NODES + TENANT_B_NODES)):
        nodes = [n for n in list_nodes(session, system) if names is None or n.name in names]
        operations = plan_action(session, system, nodes, action, ActionParams())
        session.commit()
        runner.run_many([o.id for o in operations], concurrency=8)
    session.expire_all()
    grants = [{"tenant": "tenant-a", "max_nodes": 4, "max_gpus": 4, "max_gpu_hours": 5000},
              {"tenant": "tenant-b", "max_gpus": 8}]
    create_vdc(session, system, VdcCreate(name="train", nodes=list(TENANT_A_NODES + TENANT_B_NODES), tenants=grants,
                                          max_gpus=32))
    now = utcnow()
    for node, tenant, start, end in (("gpu-a02", "tenant-b", 72, 48), ("gpu-a02", "tenant-a", 24, None),
                                     ("gpu-a01", "tenant-a", 72, None), ("gpu-b01", "tenant-b", 48, None)):
        create_lease(session, system, LeaseCreate(node=node, tenant=tenant, starts_at=now - timedelta(hours=start),
                                                  ends_at=now - timedelta(hours=end) if end else None))
    session.commit()
    persist_history(session, now)
    from metering.usage import build_usage  # what the worker's hourly bills run records from the leases

    build_usage(session, now - timedelta(days=4), now + timedelta(hours=1), now=now)
    session.commit()
    return world


def signed_in_page(console: Any, username: str, path: str, **context: Any) -> tuple[Any, ConsoleErrors]:
    """A new browser context of the running `console` (1400 × 1000 unless `context` says otherwise)
    signed in as `username` through the form and landed on `path`, with its console errors kept."""
    page = console.browser.new_context(**{"viewport": {"width": 1400, "height": 1000}, **context}).new_page()
    errors = ConsoleErrors(page)
    sign_in(page, console.base_url, username, PASSWORD, path)
    page.wait_for_url(f"{console.base_url}{path}")
    return page, errors


def fleet_seeded(driver: Any) -> Callable[[Any, Any, Any], Any]:
    """A `running_console` seed: `seed_fleet` with the fake `driver`."""
    return lambda session, engine, settings: seed_fleet(session, engine, settings, driver)


def persist_history(session: Any, now: Any) -> None:
    """Six hours of IPMI and DCGM samples through the collectors' store, one BMC unreachable,
    gpu-free2's BMC not answering for half an hour in the middle, one GPU with an XID error,
    gpu-a01 running warm (a warning-state sensor)."""
    import math
    from datetime import timedelta

    from sqlmodel import select

    from collectors.base import Sample, TargetResult
    from collectors.store import persist_results
    from fleet.models import Gpu, Node

    names = dict(session.exec(select(Node.id, Node.name)).all())
    uuids = [(names[node_id], uuid, index) for node_id, uuid, index in session.exec(select(Gpu.node_id, Gpu.uuid, Gpu.index))]
    healthy = [n for n in sorted(names.values()) if n != "gpu-free3"]
    for step in range(HISTORY_STEPS, -1, -1):
        ts = now - timedelta(minutes=5 * step)
        wave = math.sin(step / 6)
        results = []
        for i, node in enumerate(healthy):
            if node == "gpu-free2" and BMC_OUTAGE_STEPS[0] >= step > BMC_OUTAGE_STEPS[1]:
                results.append(TargetResult(node, ok=False, error="no answer from the BMC within 2.0 s"))
                continue
            temp = 86.0 if node == "gpu-a01" else 55.0 + 3 * i + 4 * wave
            sensor = {"id": "3", "name": "CPU Temp"}
            results.append(TargetResult(node, ok=True, samples=[
                Sample("ipmi", node, "ipmi_dcmi_power_consumption_watts", 2400.0 + 150 * i + 200 * wave, "watts", {}, ts),
                Sample("ipmi", node, "ipmi_temperature_celsius", temp, "celsius", sensor, ts),
                Sample("ipmi", node, "ipmi_temperature_state", 1.0 if temp > 80 else 0.0, "state", sensor, ts),
            ]))
        results.append(TargetResult("gpu-free3", ok=False, error="no answer from the BMC within 2.0 s"))
        persist_results(session, "ipmi", results, now=ts)
        gpu_samples = []
        for node, uuid, index in uuids:
            busy = 90.0 if node == "gpu-b01" else 40.0 + 30 * wave
            gpu_samples += [Sample("dcgm", uuid, "gpu_util", busy, "percent", {}, ts),
                            Sample("dcgm", uuid, "gpu_memory_used", (20 + 8 * index + busy / 2) * 2 ** 30, "bytes", {}, ts),
                            Sample("dcgm", uuid, "gpu_power", 150 + 40 * index + 5 * busy, "watts", {}, ts),
                            Sample("dcgm", uuid, "gpu_temperature", 35 + 4 * index + busy / 3, "celsius", {}, ts)]
        if step == 0:
            first = min(uuid for node, uuid, _ in uuids if node == "gpu-a01")
            gpu_samples.append(Sample("dcgm", first, "gpu_last_xid", 79.0, "code", {}, ts))
        persist_results(session, "dcgm", [TargetResult("prometheus", ok=True, samples=gpu_samples)], now=ts)
        session.commit()


# --- driving forms and callbacks ---------------------------------------------------------


def choose(page: Any, dropdown: str, label: str) -> None:
    """Open the dropdown with id `dropdown` and pick the option named `label`."""
    page.click(f"#{dropdown}")
    page.get_by_role("option", name=label, exact=True).click()


def press(page: Any, selector: str, sent: str, shown: str) -> str:
    """Click `selector`, wait for the callback request mentioning `sent` (a component id) to be
    answered and drawn; the text of element `shown` (e.g. the form's message) then."""
    with page.expect_response(lambda r: "/_dash-update-component" in r.url and sent in (r.request.post_data or "")):
        page.click(selector)
    page.wait_for_function("() => !document.querySelector('[data-dash-is-loading=\"true\"]')")
    return page.inner_text(f"#{shown}")


def post_callback(page: Any, base_url: str, trigger: str, inputs: list[Any], state: list[Any],
                  outputs: list[Any] | None = None) -> Any:
    """POST a Dash callback request as the signed-in browser would (its cookies and CSRF header) to
    the callback whose first input is component `trigger` (an id, or the `type` of a pattern-matching
    id), found in `/_dash-dependencies`. `inputs` and `state` are its `{id, property, value}` entries
    in order (a list of them for a pattern-matching one; the first input's first entry is the one
    "pressed"), `outputs` its `{id, property}` entries (default: the callback's plain outputs)."""
    import json

    from dashboards.session import CSRF_COOKIE, CSRF_HEADER

    def names(component_id: str) -> bool:
        return component_id == trigger or (component_id.startswith("{") and json.loads(component_id).get("type") == trigger)

    dependencies = page.request.get(f"{base_url}/_dash-dependencies").json()
    key = next(d["output"] for d in dependencies if d["inputs"] and names(d["inputs"][0]["id"]))
    if outputs is None:
        parts = [part.split("@")[0] for part in key.strip(".").split("...")]
        outputs = [dict(zip(("id", "property"), part.rsplit(".", 1), strict=True)) for part in parts]
    pressed = inputs[0][0] if isinstance(inputs[0], list) else inputs[0]
    pressed_id = pressed["id"] if isinstance(pressed["id"], str) else json.dumps(pressed["id"], sort_keys=True,
                                                                                  separators=(",", ":"))
    token = next(c["value"] for c in page.context.cookies() if c["name"] == CSRF_COOKIE)
    body = {"output": key, "outputs": outputs if len(outputs) > 1 else outputs[0], "inputs": inputs, "state": state,
            "changedPropIds": [f"{pressed_id}.{pressed['property']}"]}
    return page.request.post(f"{base_url}/_dash-update-component", data=body, headers={CSRF_HEADER: token})
