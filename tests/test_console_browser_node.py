"""The node page's GPU panels and health events in a real browser (Debian Chromium through
Playwright) against the real app over the seeded fleet (tests.browser.seed_fleet: gpu-a01 runs
warm with an XID 79 on its first GPU, gpu-free2's BMC stops answering for half an hour and comes
back, gpu-free3's BMC never answers), all stored through `collectors.store.persist_results`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session, col, select

from collectors.base import Sample, TargetResult
from collectors.health_events import gpu_label
from collectors.store import persist_results
from fleet.models import Gpu, Node
from fleet.provisioning.fake import FakeDriver
from tests.browser import (
    BMC_OUTAGE_STEPS,
    ConsoleErrors,
    fleet_seeded,
    running_console,
    screenshot,
    signed_in_page,
    wait_for_charts,
)

GPU_PANELS = ("node-gpu-util", "node-gpu-memory", "node-gpu-power", "node-gpu-temperature")
CHARTS = 7  # node power and temperature, the four GPU panels, the XID timeline
FIGURE_JS = "id => document.querySelector('#' + id + ' .js-plotly-plot').data.map(t => [t.name, t.y.length, t.text || null])"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = FakeDriver(delay=0.3)
    with running_console(tmp_path_factory.mktemp("node-console"), driver,
                         fleet_seeded(driver)) as running:
        yield running


def open_node(console: Any, username: str, node: str) -> tuple[Any, ConsoleErrors]:
    return signed_in_page(console, username, f"/nodes/{node}")


def labels_of(console: Any, node: str) -> list[str]:
    """The legend labels of the node's GPUs, in index order (as the page must name them)."""
    with Session(console.engine) as session:
        gpus = session.exec(select(Gpu).join(Node, col(Node.id) == Gpu.node_id).where(Node.name == node)
                            .order_by(col(Gpu.index))).all()
    return [gpu_label(g.index, g.model, g.uuid) for g in gpus]


def rows(page: Any, element: str) -> list[list[str]]:
    return page.evaluate(f"() => Array.from(document.querySelectorAll('#{element} tbody tr'))"
                         ".map(r => Array.from(r.cells).map(c => c.innerText))")


def test_gpu_panels_draw_one_line_per_gpu_and_the_xid_timeline_follows_the_range(console: Any) -> None:
    page, errors = open_node(console, "ops-admin", "gpu-a01")
    drawn = {c["id"]: c for c in wait_for_charts(page, CHARTS)}
    labels = labels_of(console, "gpu-a01")
    assert len(labels) == 2 and labels[0].startswith("GPU 0 · NVIDIA H100 80GB HBM3 · …")
    for panel in GPU_PANELS:
        assert drawn[panel]["marks"] > 0, drawn[panel]
        traces = page.evaluate(FIGURE_JS, panel)
        assert [name for name, _, _ in traces] == labels, panel  # one line per GPU, named by index, model, UUID tail
        assert all(points >= 70 for _, points, _ in traces)  # the seeded 6 hours of 5-minute polls
        # the a11y contract: a labelled figure with the data as a hidden table, one column per GPU
        assert page.get_attribute(f"#{panel}", "role") == "figure"
        header = page.evaluate(f"() => Array.from(document.querySelectorAll('#{panel} .chart-data thead th')).map(t => t.textContent)")
        assert header == ["time (UTC)", *labels]
    assert page.evaluate(FIGURE_JS, "node-gpu-xid") == [[labels[0], 1, ["XID 79"]]]
    assert "XID errors (chart; its data follow as a table)" == page.get_attribute("#node-gpu-xid", "aria-label")
    [xid] = rows(page, "node-xids")
    assert xid[1:] == [labels[0], "79", "GPU has fallen off the bus"]
    events = rows(page, "node-events")
    assert ["sensor", "Sensor CPU Temp is warning at its first reading (86 celsius)", "ipmi"] in [e[1:] for e in events]
    assert ["xid", f"{labels[0]}: XID 79 — GPU has fallen off the bus", "dcgm"] in [e[1:] for e in events]
    screenshot(page, "admin-node-gpu-panels")

    # ten days ago: nothing was collected then, and every panel and the XID table say so
    day = (datetime.now(UTC) - timedelta(days=10)).date().isoformat()
    for field in ("#node-from", "#node-to"):
        page.fill(field, day)
        page.keyboard.press("Enter")
    page.wait_for_selector("#node-xids:has-text('No XID errors in this range.')")
    wait_for_charts(page, CHARTS)
    assert page.get_attribute("#node-gpu-xid", "aria-label") == "XID errors: No XID errors in this range."
    assert page.get_attribute("#node-gpu-memory", "aria-label").startswith("GPU framebuffer memory used: No GPU memory")
    assert errors.messages == []
    page.context.close()


def test_a_bmc_lost_and_found_again_is_one_event_each_way(console: Any) -> None:
    page, errors = open_node(console, "ops-admin", "gpu-free2")
    page.wait_for_selector("#node-events tbody tr")
    bmc = [e[2] for e in rows(page, "node-events") if e[1] == "bmc"]
    failed = BMC_OUTAGE_STEPS[0] - BMC_OUTAGE_STEPS[1]
    assert bmc == [f"BMC answers the ipmi collector again, after {failed} failed polls",  # newest first
                   "BMC stopped answering the ipmi collector"]
    page.goto(f"{console.base_url}/nodes/gpu-free3")  # never answered: nothing lost, no event
    page.wait_for_selector("#node-bmc-polls:has-text('not answering')")
    assert "bmc" not in [e[1] for e in rows(page, "node-events")]
    assert errors.messages == []
    page.context.close()


def test_tenants_see_their_nodes_gpu_panels_and_only_the_health_events_of_their_lease(console: Any) -> None:
    # after alice's lease was recorded: CPU Temp back to ok, an XID 43 on the second GPU
    with Session(console.engine) as session:
        uuid = session.exec(select(Gpu.uuid).join(Node, col(Node.id) == Gpu.node_id)
                            .where(Node.name == "gpu-a01", Gpu.index == 1)).one()
        at, sensor = datetime.now(UTC), {"id": "3", "name": "CPU Temp"}
        persist_results(session, "ipmi", [TargetResult("gpu-a01", ok=True, samples=[
            Sample("ipmi", "gpu-a01", "ipmi_temperature_celsius", 70.0, "celsius", sensor, at),
            Sample("ipmi", "gpu-a01", "ipmi_temperature_state", 0.0, "state", sensor, at)])], now=at)
        persist_results(session, "dcgm", [TargetResult("prometheus", ok=True, samples=[
            Sample("dcgm", uuid, "gpu_last_xid", 43.0, "code", {}, at)])], now=at)
        session.commit()
    labels = labels_of(console, "gpu-a01")
    page, errors = open_node(console, "alice", "gpu-a01")
    wait_for_charts(page, CHARTS)
    assert [name for name, _, _ in page.evaluate(FIGURE_JS, "node-gpu-util")] == labels
    # the XID 79 and the warm sensor's first reading were stored before her lease was: not hers to read
    assert [x[1:] for x in rows(page, "node-xids")] == [[labels[1], "43", "GPU stopped processing"]]
    assert page.evaluate(FIGURE_JS, "node-gpu-xid") == [[labels[1], 1, ["XID 43"]]]
    events = [e[1:] for e in rows(page, "node-events")]
    assert ["sensor", "Sensor CPU Temp went from warning to ok (70 celsius)"] in events
    assert ["xid", f"{labels[1]}: XID 43 — GPU stopped processing"] in events
    assert not [e for e in events if "XID 79" in e[1] or "first reading" in e[1]]
    assert all(len(e) == 2 for e in events)  # when, kind, message: no actor column for tenants
    page.goto(f"{console.base_url}/nodes/gpu-free2")  # not hers: neither the page nor its BMC events
    page.wait_for_selector("#node-missing")
    assert "BMC" not in page.inner_text("body")
    assert errors.messages == []
    page.context.close()
