"""Accessibility of every console page for every persona: Deque's axe-core (npm, installed by
`tests/peers/chromium.sh install`) injected into Debian's Chromium through Playwright, 0 serious or
critical violations; plus what axe cannot judge alone: `<html lang>`, the active nav link's
`aria-current`, keyboard focus, a text alternative per chart, dark mode from the browser's setting."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import Session, select

from fleet.models import Node
from fleet.provisioning.fake import FakeDriver
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.roles import Role
from kiln.users import UserCreate, create_user
from tests.browser import (PASSWORD, ConsoleErrors, axe_violations, running_console, screenshot, seed_fleet,
                           shared_context, sign_in)
from tests.test_console_browser_costs import seed_costs

PERSONAS = {  # username → role; seed_fleet makes ops-admin and alice, seed_costs fiona, the seed below tara
    "ops-admin": Role.INFRA_ADMIN, "fiona": Role.FINANCE, "tara": Role.TENANT_ADMIN, "alice": Role.TENANT_MEMBER,
}
# Every page of the console, for every persona: a page a role may not open shows its 403 panel, which is checked too.
PAGES = ("/fleet", "/vdcs", "/usage", "/costs", "/finance", "/members", "/account", "/nodes/gpu-a01", "/firmware",
         "/no-such-page")
# The axe rules whose outcome depends on colours (what the dark scheme changes).
COLOUR_RULES = ("color-contrast", "link-in-text-block")
PAGE_SETTLED_JS = """() => {
  const content = document.getElementById('_pages_content');
  const graphs = Array.from(document.querySelectorAll('.dash-graph'));
  return content && content.children.length > 0 && !document.querySelector('[data-dash-is-loading="true"]')
    && graphs.every(g => g.querySelector('.main-svg'))
    && !document.querySelector('.ag-delay-render');  // a grid still drawing its rows is not the page yet
}"""


class A11yConsole:
    """The running console and one signed-in browser page per persona, made on first use."""

    def __init__(self, base_url: str, browser: Any, engine: Any):
        self.base_url, self.browser, self.engine = base_url, browser, engine
        self.pages: dict[str, tuple[Any, ConsoleErrors]] = {}

    def page_of(self, username: str) -> tuple[Any, ConsoleErrors]:
        """The persona's page, signed in once, with the console errors of earlier tests forgotten."""
        if username not in self.pages:
            page = shared_context(self.browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
            errors = ConsoleErrors(page)
            sign_in(page, self.base_url, username, PASSWORD, "/account")
            page.wait_for_url(f"{self.base_url}/account")
            self.pages[username] = (page, errors)
        page, errors = self.pages[username]
        errors.messages.clear()
        return page, errors


def open_settled(page: Any, url: str) -> None:
    """Go to `url` and wait until Dash has drawn the page and each of its charts."""
    page.goto(url)
    page.wait_for_function(PAGE_SETTLED_JS, timeout=20000)
    page.wait_for_timeout(200)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[A11yConsole]:
    driver = FakeDriver(delay=0.05)

    def seed(session: Session, engine: Any, settings: Any) -> None:
        seed_fleet(session, engine, settings, driver)
        seed_costs(session, utcnow())
        create_user(session, Principal.system("test"),
                    UserCreate(username="tara", role=Role.TENANT_ADMIN, tenants=["tenant-a"], password=PASSWORD))
        session.commit()

    with running_console(tmp_path_factory.mktemp("console-a11y"), driver, seed) as running:
        yield A11yConsole(running.base_url, running.browser, running.engine)


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("username", sorted(PERSONAS))
def test_no_serious_or_critical_axe_violations(console: A11yConsole, username: str, path: str) -> None:
    page, errors = console.page_of(username)
    open_settled(page, f"{console.base_url}{path}")
    violations = axe_violations(page)
    if violations:
        screenshot(page, f"a11y-{username}-{path.strip('/').replace('/', '-')}")
    assert violations == [], "\n".join(f"{v['impact']} {v['id']} ({v['help']}): {v['targets']}" for v in violations)
    if username == "ops-admin":  # every page in the dark scheme too, switched live as a user's system switches it
        page.emulate_media(color_scheme="dark")
        try:
            assert _luminance(page.evaluate(DARK)) < 0.15 and _luminance(page.evaluate(SURFACE, "#topbar")) < 0.15
            # the scheme changes colours only: axe's colour rules here, every rule in the light scheme above
            violations = axe_violations(page, rules=COLOUR_RULES)
            assert violations == [], ("dark", violations)
        finally:
            page.emulate_media(color_scheme="light")
    assert [m for m in errors.messages if "status of 403" not in m and "status of 404" not in m] == []


def test_sign_in_page_has_no_serious_or_critical_axe_violations(console: A11yConsole) -> None:
    page = console.browser.new_page()
    page.goto(f"{console.base_url}/signin")
    assert axe_violations(page) == []
    page.close()


# What each chart container says about itself, and what the chart draws (plotly's own data on the element).
CHARTS_DESCRIBED_JS = """() => Array.from(document.querySelectorAll('.dash-graph')).map(graph => {
  const plot = graph.querySelector('.js-plotly-plot'), wrap = graph.querySelector(':scope > .chart-data'),
    table = wrap && wrap.querySelector('table');
  const title = plot.layout.title && (plot.layout.title.text || plot.layout.title);
  return {id: graph.id, role: graph.getAttribute('role'), label: graph.getAttribute('aria-label'), title: title,
    caption: table ? table.caption.textContent : null,
    header: table ? Array.from(table.tHead.rows[0].cells).map(c => c.textContent) : [],
    rows: table ? Array.from(table.tBodies[0].rows).map(r => Array.from(r.cells).map(c => c.textContent)) : [],
    drawn: wrap ? wrap.getBoundingClientRect().width : 0,
    grew: ['l', 'r', 't', 'b'].filter(side => Math.round(plot._fullLayout._size[side]) > ((plot.layout.margin || {})[side] || 0))
      .map(side => `${side} ${(plot.layout.margin || {})[side]} -> ${Math.round(plot._fullLayout._size[side])}`),
    ticks: Array.from(plot.querySelectorAll('.xtick text')).slice(0, 3).map(t => t.getAttribute('transform') + ' ' + t.textContent),
    traces: plot.data.map(t => ({x: t.x || [], y: t.y || [], horizontal: t.orientation === 'h'}))};
})"""


# Each chart's height now, and a count of its draws (plotly's `plotly_afterplot`) from now on.
CHARTS_WATCHED_JS = """() => document.querySelectorAll('.js-plotly-plot').forEach(plot => {
  plot.dataset.watchedHeight = plot.clientHeight; plot.dataset.draws = 0;
  plot.on('plotly_afterplot', () => { plot.dataset.draws = Number(plot.dataset.draws) + 1; });
})"""
# Each chart since CHARTS_WATCHED_JS: {id: [draws, height then, height now]}.
CHARTS_WATCHED_SINCE_JS = """() => Object.fromEntries(Array.from(document.querySelectorAll('.js-plotly-plot'))
  .map(plot => [plot.closest('.dash-graph').id, [Number(plot.dataset.draws), Number(plot.dataset.watchedHeight), plot.clientHeight]]))"""


def renderer_busy_seconds(page: Any, seconds: float) -> float:
    """The seconds the page's renderer spent running tasks (scripts, style, layout, paint) while
    `seconds` went by (Chromium's `Performance.getMetrics` TaskDuration, through CDP)."""
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("Performance.enable")
        before = _task_duration(cdp)
        page.wait_for_timeout(seconds * 1000)
        return _task_duration(cdp) - before
    finally:
        cdp.detach()


def _task_duration(cdp: Any) -> float:
    return next(m["value"] for m in cdp.send("Performance.getMetrics")["metrics"] if m["name"] == "TaskDuration")


def _cell(value: Any) -> str:
    """A drawn value as the chart's table writes it: numbers to 3 decimals, ISO times to the second."""
    if isinstance(value, (int, float)):  # JavaScript's Math.round takes halves up, Python's round to even
        return f"{math.floor(value * 1000 + 0.5) / 1000:.3f}".rstrip("0").rstrip(".")
    return re.sub(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}(:\d{2})?)(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$", r"\1 \2", str(value))


def _assert_table_matches_chart(chart: dict[str, Any]) -> None:
    assert chart["role"] == "figure" and chart["label"].startswith(chart["title"]), chart["id"]
    assert chart["caption"] == chart["title"] and chart["drawn"] <= 1, chart["id"]  # visually hidden, read aloud
    rows = {row[0]: row[1:] for row in chart["rows"]}
    points = 0
    for column, trace in enumerate(chart["traces"]):
        keys, values = (trace["y"], trace["x"]) if trace["horizontal"] else (trace["x"], trace["y"])
        for key, value in zip(keys, values, strict=True):
            assert rows[_cell(key)][column] == _cell(value), (chart["id"], key, value)
            points += 1
    assert points > 0 and len(rows) == len({_cell(k) for t in chart["traces"] for k in (t["y"] if t["horizontal"] else t["x"])})


@pytest.mark.parametrize("path", ("/fleet", "/vdcs", "/usage", "/costs", "/finance", "/nodes/gpu-a01"))
def test_every_chart_has_a_text_alternative_made_from_its_data(console: A11yConsole, path: str) -> None:
    page, errors = console.page_of("ops-admin")
    open_settled(page, f"{console.base_url}{path}")
    page.wait_for_function("() => Array.from(document.querySelectorAll('.dash-graph')).every(g => g.getAttribute('role'))")
    charts = page.evaluate(CHARTS_DESCRIBED_JS)
    assert charts
    # the figure's margins had room for its labels and legend: plotly's automargin drew no chart twice
    assert {chart["id"]: (chart["grew"], chart["ticks"]) for chart in charts if chart["grew"]} == {}
    # and once drawn, a chart keeps its height while the page sits idle (a border on plotly's own div had
    # grown every chart 2 px a resize, each resize a redraw, several a second for ever); dcc.Graph's one
    # resize 100 ms after a chart's first draw may still be to come, and draws it once more
    page.evaluate(CHARTS_WATCHED_JS)
    page.wait_for_timeout(1500)
    watched = page.evaluate(CHARTS_WATCHED_SINCE_JS)
    assert {chart: seen for chart, seen in watched.items() if seen[0] > 1 or seen[1] != seen[2]} == {}
    # nor does anything else keep the idle page busy (the growing charts: ~0.5 s of renderer work a second)
    busy = renderer_busy_seconds(page, 1.0)
    assert busy < 0.15, f"{path}, idle, kept the renderer busy {busy:.2f} s of 1 s"
    for chart in charts:
        if chart["caption"] is None:  # an empty chart says why in its label, and has no table
            assert chart["label"].startswith(f"{chart['title']}: ") and not any(t["x"] or t["y"] for t in chart["traces"])
        else:
            _assert_table_matches_chart(chart)
    if path == "/fleet":  # the states chart's table says what the database says
        with Session(console.engine) as session:
            states = Counter(str(state) for state in session.exec(select(Node.provision_state)).all())
        table = next(c for c in charts if c["id"] == "fleet-states")
        assert {row[0]: row[1] for row in table["rows"]} == {state: str(n) for state, n in states.items()}
    assert errors.messages == []


def test_chart_tables_follow_a_changed_figure(console: A11yConsole) -> None:
    page, errors = console.page_of("ops-admin")
    open_settled(page, f"{console.base_url}/nodes/gpu-a01")
    page.wait_for_function("() => document.querySelector('#node-power .chart-data table')")
    before = next(c for c in page.evaluate(CHARTS_DESCRIBED_JS) if c["id"] == "node-power")
    page.focus("#node-range")  # by keyboard: Enter opens the range list, Enter picks the focused option
    page.keyboard.press("Enter")
    # The open list moves focus to the chosen option ("Last 24 hours") a moment later; focus moved before that is lost.
    page.wait_for_function("() => document.activeElement.closest('[role=listbox]') && document.activeElement.value === '24h'")
    page.get_by_role("option", name="Last 6 hours").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('node-range').textContent.includes('Last 6 hours')")
    page.wait_for_function("n => document.querySelectorAll('#node-power .chart-data table tbody tr').length !== n",
                           arg=len(before["rows"]))
    after = next(c for c in page.evaluate(CHARTS_DESCRIBED_JS) if c["id"] == "node-power")
    _assert_table_matches_chart(after)
    assert 0 < len(after["rows"]) < len(before["rows"])
    assert errors.messages == []


def test_html_lang_and_the_current_nav_link(console: A11yConsole) -> None:
    page, errors = console.page_of("fiona")
    open_settled(page, f"{console.base_url}/costs")
    assert page.evaluate("() => document.documentElement.lang") == "en"
    current = "() => Array.from(document.querySelectorAll('[aria-current]')).map(e => [e.id, e.getAttribute('aria-current')])"
    page.wait_for_function(f"() => ({current})().length === 1")
    assert page.evaluate(current) == [["nav-costs", "page"]]
    page.click("#nav-finance")  # Dash Pages navigates without a reload: the mark moves with it
    page.wait_for_url(f"{console.base_url}/finance")
    page.wait_for_function("() => document.querySelector('#nav-finance').getAttribute('aria-current') === 'page'")
    assert page.evaluate(current) == [["nav-finance", "page"]]
    assert errors.messages == []


FOCUSED_JS = """() => { const e = document.activeElement, style = getComputedStyle(e);
  return {id: e.id, tag: e.tagName, text: (e.textContent || '').trim().slice(0, 40), outline: style.outlineStyle,
          width: parseFloat(style.outlineWidth), hidden: e.closest('[aria-hidden="true"]') !== null}; }"""


def test_keyboard_reaches_every_control_with_a_visible_focus_ring(console: A11yConsole) -> None:
    page, errors = console.page_of("alice")
    open_settled(page, f"{console.base_url}/usage")
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUSED_JS)
        reached.append(focused["id"] or focused["text"])
        assert focused["outline"] != "none" and focused["width"] >= 2, focused  # keyboard focus is visible
        assert not focused["hidden"], focused  # never on something screen readers are told to skip
    for control in ("nav-usage", "nav-costs", "nav-account", "signout-button", "usage-tenant", "usage-range"):
        assert control in reached, reached
    assert reached.index("usage-tenant") == reached.index("usage-range") - 1  # one Tab stop per dropdown
    assert errors.messages == []


def test_usage_detail_tabs_are_reached_and_chosen_by_keyboard(console: A11yConsole) -> None:
    page, errors = console.page_of("alice")
    open_settled(page, f"{console.base_url}/usage")
    assert page.get_attribute("#usage-details-lease", "aria-selected") == "true"
    assert page.get_attribute("#details [role=tablist]", "aria-label") == "Usage details"
    page.focus("#usage-details-lease")
    page.keyboard.press("Tab")  # each tab is a button: one Tab stop each, in order
    focused = page.evaluate(FOCUSED_JS)
    assert focused["id"] == "usage-details-namespace" and focused["outline"] != "none" and focused["width"] >= 2, focused
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#usage-details-namespace').getAttribute('aria-selected') === 'true'")
    page.wait_for_selector("#usage-namespace-table")
    assert page.get_attribute("#usage-details-lease", "aria-selected") == "false"
    assert page.query_selector("#usage-allocation-table") is None  # only the chosen tab's table is drawn
    assert axe_violations(page) == []
    assert errors.messages == []


DARK = "() => getComputedStyle(document.body).backgroundColor"
SURFACE = "s => getComputedStyle(document.querySelector(s)).backgroundColor"
TICK_FILL = "() => getComputedStyle(document.querySelector('.js-plotly-plot .xtick text')).fill"


def _luminance(rgb: str) -> float:
    red, green, blue = (int(part) for part in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


def test_dark_mode_follows_the_browser_and_stays_accessible(console: A11yConsole) -> None:
    """A browser in the dark scheme from the start gets the dark console (every page is also checked
    in both schemes by the axe test above, switched live)."""
    context = console.browser.new_context(viewport={"width": 1400, "height": 1000}, color_scheme="dark")
    page = context.new_page()
    errors = ConsoleErrors(page)
    sign_in(page, console.base_url, "ops-admin", PASSWORD, "/usage")
    page.wait_for_url(f"{console.base_url}/usage")
    open_settled(page, f"{console.base_url}/usage")
    assert _luminance(page.evaluate(DARK)) < 0.15 and _luminance(page.evaluate(SURFACE, "#topbar")) < 0.15
    assert axe_violations(page, rules=COLOUR_RULES) == []
    screenshot(page, "a11y-dark-usage")
    assert page.evaluate("() => document.querySelector('.js-plotly-plot .main-svg').style.background") in (
        "rgba(0, 0, 0, 0)", "transparent")  # the chart shows the dark card through
    assert _luminance(page.evaluate(SURFACE, ".dash-graph")) < 0.15 and _luminance(page.evaluate(TICK_FILL)) > 0.7
    assert errors.messages == []
    context.close()
    light, _ = console.page_of("ops-admin")  # and the default (light) scheme is light
    open_settled(light, f"{console.base_url}/usage")
    assert _luminance(light.evaluate(DARK)) > 0.9 and _luminance(light.evaluate(TICK_FILL)) < 0.4
