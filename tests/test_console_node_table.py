"""The fleet page's node table in a real browser (Debian Chromium through Playwright) against the
real app: paging with a page-size choice, one search over every column, status chips, the VDC
column, readable headers, the action bar that stays on screen, an action on every node the search
and filters match; and tenants never reach it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import Session

from fleet.provisioning.fake import FakeDriver
from tests.browser import (
    TENANT_A_NODES,
    TENANT_B_NODES,
    ConsoleErrors,
    running_console,
    choose,
    post_callback,
    screenshot,
    seed_fleet,
    signed_in_page,
)

SPARES = tuple(f"spare-{i:02d}" for i in range(1, 31))  # enrolled in rack r9, in no VDC, leased to nobody
SUMMARY = ".ag-paging-row-summary-panel"
# Header labels with a word wider than the label (the browser then breaks the word), by measuring each word.
HEADER_WORDS_CUT_JS = """() => Array.from(document.querySelectorAll('#node-grid .ag-header-cell-text')).filter(label => {
  const probe = document.body.appendChild(document.createElement('span'));
  probe.style.cssText = 'position:absolute;visibility:hidden;white-space:nowrap;font:' + getComputedStyle(label).font;
  const widest = Math.max(...label.textContent.split(/\\s+/).map(word => { probe.textContent = word;
                                                                     return probe.getBoundingClientRect().width; }));
  probe.remove();
  return widest > label.clientWidth + 1;
}).map(label => label.textContent)"""
# Status chips drawn past their cell's edge (cut off by the cell).
CHIPS_CUT_JS = """() => Array.from(document.querySelectorAll('#node-grid .ag-center-cols-container .chip')).filter(chip =>
  chip.getBoundingClientRect().right > chip.closest('.ag-cell').getBoundingClientRect().right).map(chip => chip.textContent)"""


def seed_spares(session: Session, settings: Any, driver: FakeDriver) -> None:
    """Thirty more nodes, enrolled through Kiln's node service, so the table has more than one page."""
    from fleet.nodes import create_node
    from fleet.provisioning.registry import Drivers
    from fleet.schemas import NodeCreate
    from kiln.auth import Principal
    from kiln.security import SecretBox
    from kiln.settings import resolve_secret_key
    from tests.fleet_helpers import node_payload

    drivers, box = Drivers(settings, fake=driver), SecretBox(resolve_secret_key(settings))
    for name in SPARES:
        create_node(session, Principal.system("test"), NodeCreate(**node_payload(name=name, rack="r9")), drivers, box)
    session.commit()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = FakeDriver(delay=0.05)

    def seed(session: Session, engine: Any, settings: Any) -> None:
        seed_fleet(session, engine, settings, driver)
        seed_spares(session, settings, driver)

    with running_console(tmp_path_factory.mktemp("console-nodes"), driver, seed) as running:
        yield running


def _page_as(console: Any, username: str, path: str) -> tuple[Any, ConsoleErrors]:
    return signed_in_page(console, username, path, viewport={"width": 1400, "height": 900})


def _summary(page: Any, expected: str) -> None:
    page.wait_for_function("([s, t]) => (document.querySelector(s) || {}).textContent.replace(/\\s+/g, ' ').trim() === t",
                           arg=[SUMMARY, expected], timeout=10000)


def _choose(page: Any, grouping: str) -> None:
    page.get_by_role("button", name=f"Group by {page.inner_text('#node-group-by')}").click()  # named by its label
    page.get_by_role("option", name=grouping).click()


def _shown_nodes(page: Any) -> list[str]:
    return sorted(page.evaluate("() => Array.from(document.querySelectorAll("
                                "'#node-grid .ag-center-cols-container .ag-row')).map(r => r.getAttribute('row-id'))"))


def test_node_table_pages_searches_and_shows_chips(console: Any) -> None:
    every = len(TENANT_A_NODES + TENANT_B_NODES) + 3 + len(SPARES)
    page, errors = _page_as(console, "ops-admin", "/fleet")
    page.wait_for_selector("#node-grid .ag-row[row-id='gpu-a01']")
    _summary(page, f"1 to {every} of {every}")  # 50 a page by default
    page.click("#node-grid .ag-paging-page-size .ag-picker-field-wrapper")
    page.click(".ag-select-list .ag-list-item:has-text('25')")
    _summary(page, f"1 to 25 of {every}")
    page.click("#node-grid .ag-paging-button[aria-label='Next Page']")
    _summary(page, f"26 to {every} of {every}")

    page.fill("#node-search", "tenant-b")  # every column is searched: here the lease holder
    _summary(page, "1 to 1 of 1")
    assert _shown_nodes(page) == list(TENANT_B_NODES)
    page.fill("#node-search", "gpu-a0")
    _summary(page, "1 to 2 of 2")
    assert _shown_nodes(page) == sorted(TENANT_A_NODES)
    page.fill("#node-search", "r9")  # the rack
    _summary(page, f"1 to 25 of {len(SPARES)}")
    page.fill("#node-search", "")
    _summary(page, f"1 to 25 of {every}")

    row = "#node-grid .ag-row[row-id='gpu-a01']"  # gpu-a01 runs warm: a warning chip that still says so in words
    assert page.inner_text(f"{row} [col-id='health'] .chip.chip-warn") == "warning"
    assert page.inner_text(f"{row} [col-id='provision_state'] .chip.chip-ok") == "available"
    assert page.inner_text(f"{row} [col-id='maintenance'] .chip.chip-neutral") == "no"
    assert page.inner_text(f"{row} [col-id='vdc']") == "train"
    assert page.evaluate(HEADER_WORDS_CUT_JS) == []  # headers wrap between words, never inside one
    assert page.evaluate(CHIPS_CUT_JS) == []
    # the table starts halfway down the window, its action bar would be far below: it stays on screen instead
    page.evaluate("() => window.scrollTo(0, document.querySelector('#nodes').getBoundingClientRect().top"
                  " + window.scrollY - window.innerHeight / 2)")
    box = page.evaluate("() => { const r = document.querySelector('#bulk-run').getBoundingClientRect();"
                        " return [r.top, r.bottom, window.innerHeight]; }")
    assert 0 <= box[0] and box[1] <= box[2], box
    screenshot(page, "admin-fleet-node-table")
    assert errors.messages == []
    page.context.close()


def test_tenants_never_reach_the_node_table(console: Any) -> None:
    page, errors = _page_as(console, "alice", "/usage")
    response = page.goto(f"{console.base_url}/fleet")
    assert response.status == 403
    page.wait_for_selector("#forbidden-title")
    content = page.content()
    assert "node-grid" not in content and "node-search" not in content
    assert [name for name in (*TENANT_B_NODES, *SPARES, "gpu-free1") if name in content] == []
    page.goto(f"{console.base_url}/nodes/{SPARES[0]}")  # nor a node they do not lease, by its page
    page.wait_for_selector("#node-missing")
    assert [m for m in errors.messages if "status of 403" not in m] == []
    page.context.close()


PINNED_JS = ("() => Array.from(document.querySelectorAll('#node-grid .ag-pinned-left-header [col-id]'))"
             ".map(e => e.getAttribute('col-id'))")
# The rack cells of the page as drawn: text, height in rows (a spanned cell covers its run of equal values).
RACK_CELLS_JS = """() => Array.from(document.querySelectorAll('#node-grid [col-id="rack"]:not(.ag-header-cell)'))
  .filter(c => c.closest('.ag-header') === null && c.textContent.trim() !== '' && c.getBoundingClientRect().height > 0)
  .map(c => [c.textContent.trim(), Math.round(c.getBoundingClientRect().height)])"""


def test_group_by_rack_merges_each_racks_run_of_rows(console: Any) -> None:
    page, errors = _page_as(console, "ops-admin", "/fleet")
    page.wait_for_selector("#node-grid .ag-row[row-id='gpu-a01']")
    row_height = page.evaluate("() => document.querySelector('#node-grid .ag-row').getBoundingClientRect().height")
    assert "rack" not in page.evaluate(PINNED_JS)
    _choose(page, "Group by rack")
    page.wait_for_function(f"() => ({PINNED_JS})().includes('rack')")  # kept in view beside the node's name
    # the grid draws the rows again once grouped (a fixed pause was too short on a loaded machine)
    page.wait_for_function(f"() => {{ const racks = ({RACK_CELLS_JS})().map(c => c[0]); "
                           "return racks.includes('r1') && racks.includes('r9'); }")
    cells = page.evaluate(RACK_CELLS_JS)
    screenshot(page, "admin-fleet-node-table-by-rack")
    by_rack = {text: height for text, height in cells}
    assert set(by_rack) == {"r1", "r9"}, cells  # one cell per rack, however many rows it covers
    assert by_rack["r1"] >= 5 * row_height and by_rack["r9"] >= 5 * row_height, (cells, row_height)
    _choose(page, "No grouping")
    page.wait_for_function(f"() => !({PINNED_JS})().includes('rack')")
    assert errors.messages == []
    page.context.close()


# The names on the grid's current page, in its order, loaded or not (the DOM holds only the rows in view).
PAGE_ROWS_JS = """() => { const api = dash_ag_grid.getApi('node-grid'), size = api.paginationGetPageSize();
  const first = api.paginationGetCurrentPage() * size, out = [];
  for (let i = first; i < Math.min(first + size, api.getDisplayedRowCount()); i++) {
    const node = api.getDisplayedRowAtIndex(i); out.push(node && node.data ? node.data.name : null); }
  return out; }"""


def test_rows_come_from_the_server_a_page_at_a_time(console: Any) -> None:
    every = sorted((*TENANT_A_NODES, *TENANT_B_NODES, "gpu-free1", "gpu-free2", "gpu-free3", *SPARES), reverse=True)
    page, errors = _page_as(console, "ops-admin", "/fleet")
    bodies: list[str] = []
    page.on("response", lambda r: bodies.append(r.text()) if "_dash-update-component" in r.url and r.ok else None)
    page.reload()
    page.wait_for_selector("#node-grid .ag-row[row-id='gpu-a01']")
    page.click("#node-grid .ag-paging-page-size .ag-picker-field-wrapper")
    page.click(".ag-select-list .ag-list-item:has-text('25')")
    _summary(page, f"1 to 25 of {len(every)}")
    header = "#node-grid .ag-header-cell[col-id='link'] .ag-header-cell-label"
    page.click(header)  # by name, then by name descending: the server sorts all the nodes, not the page
    page.click(header)
    page.wait_for_function("() => (document.querySelector(\"#node-grid .ag-row[row-index='0']\") || {}).getAttribute"
                           "&& document.querySelector(\"#node-grid .ag-row[row-index='0']\").getAttribute('row-id') === 'spare-30'")
    assert page.evaluate(PAGE_ROWS_JS) == every[:25]
    page.click("#node-grid .ag-paging-button[aria-label='Next Page']")
    _summary(page, f"26 to {len(every)} of {len(every)}")
    page.wait_for_function(f"() => ({PAGE_ROWS_JS})().join() === {json.dumps(','.join(every[25:]))}")
    blocks = [json.loads(b)["response"]["node-grid"]["getRowsResponse"] for b in bodies if '"getRowsResponse"' in b]
    assert len(blocks) >= 3 and all(len(b["rowData"]) <= 50 and b["rowCount"] == len(every) for b in blocks)
    assert not [b for b in bodies if '"getRowsResponse"' not in b and "spare-" in b]  # no rows with the page itself
    assert errors.messages == []
    page.context.close()


def _operations(console: Any) -> list[tuple[str, str]]:
    from sqlmodel import select

    from fleet.models import Node, Operation

    with Session(console.engine) as session:
        return sorted(session.exec(select(Node.name, Operation.action).join(Operation, Operation.node_id == Node.id)).all())


def _run(page: Any, action: str, finished: str) -> None:
    choose(page, "bulk-action", action)
    page.click("#bulk-run")
    page.wait_for_selector(f"#bulk-summary:has-text('{finished}')", timeout=30000)


def test_an_action_on_all_matching_nodes_runs_once_on_each(console: Any) -> None:
    page, errors = _page_as(console, "ops-admin", "/fleet")
    page.wait_for_selector("#node-grid .ag-row[row-id='gpu-a01']")
    before = _operations(console)
    page.get_by_role("switch", name="Apply to all 36 nodes", exact=True).wait_for()  # no search yet: the whole fleet
    page.fill("#node-search", "r9")
    page.get_by_label("Node Filter Input").fill("spare-0")  # and a column filter: spare-01 … spare-09
    _summary(page, "1 to 9 of 9")
    box = page.get_by_role("switch", name="Apply to all 9 matching nodes", exact=True)
    box.click()
    assert box.get_attribute("aria-checked") == "true"
    page.wait_for_selector("#bulk-run:has-text('Run on all 9 matching nodes')")  # the button says so too
    page.fill("#bulk-reason", "fan replacement")
    _run(page, "Maintenance on", "9 of 9 finished")  # fewer than 25 nodes: no question asked
    assert page.inner_text("#bulk-summary") == "9 of 9 finished: 9 succeeded, 0 failed"
    added = [o for o in _operations(console) if o not in before]
    assert added == [(name, "maintenance-on") for name in SPARES[:9]]  # one operation per matching node, no other

    page.get_by_label("Node Filter Input").fill("")  # every spare in rack r9: 30, enough to be asked first
    page.get_by_role("switch", name="Apply to all 30 matching nodes", exact=True).wait_for()
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    choose(page, "bulk-action", "Maintenance off")
    page.click("#bulk-run")
    page.wait_for_selector("#bulk-message:has-text('Cancelled: nothing was started.')")
    assert asked == ["Maintenance off on all 30 nodes matching the table's search and filters?"]
    assert [o for o in _operations(console) if o not in before] == added  # declined: nothing started
    page.once("dialog", lambda dialog: dialog.accept())
    _run(page, "Maintenance off", "30 of 30 finished")
    assert [o for o in _operations(console) if o not in before + added] == [(name, "maintenance-off") for name in SPARES]
    screenshot(page, "admin-fleet-all-matching")
    assert errors.messages == []
    page.context.close()


def test_a_tenant_cannot_act_on_all_matching_nodes(console: Any) -> None:
    page, _ = _page_as(console, "alice", "/usage")
    before = _operations(console)
    state = [{"id": "node-grid", "property": "selectedRows", "value": []},
             {"id": "bulk-all-on", "property": "data", "value": True},
             {"id": "node-grid-query", "property": "data", "value": {"search": "", "filterModel": {}, "count": 36}},
             {"id": "node-search", "property": "value", "value": ""},
             {"id": "bulk-pending", "property": "data", "value": None},
             {"id": "bulk-action", "property": "value", "value": "power-off"},
             *({"id": i, "property": "value", "value": None} for i in ("bulk-image-url", "bulk-image-checksum", "bulk-reason"))]
    answer = post_callback(page, console.base_url, "bulk-run", [{"id": "bulk-run", "property": "n_clicks", "value": 1},
                                                                {"id": "bulk-confirm", "property": "submit_n_clicks",
                                                                 "value": None}], state)
    assert "bulk-operations" not in answer.text() and "may not power-off nodes" in answer.text(), answer.text()
    assert _operations(console) == before  # nothing recorded, on their nodes or anyone's
    page.context.close()
