"""Paged Redfish collections (DSP0266 `Members@odata.nextLink`) and the new shape's thermal
thresholds, read from sushy-tools' `sushy-static` serving DMTF mockups.

Paging: no vendored mockup holds a second page, so each test builds a tmp copy of DMTF's
public-tower (tests/data/upstream/redfish/public-tower; the vendored files stay byte for byte)
whose system log is split into two pages, newest first as BMCs page their SEL, and whose
Processors collection is split too. The pages hold the mockup's own members, unchanged;
`sushy-static` serves a path with its query (`Entries?$skiptoken=1`) from the folder of that
name, so the next link is DMTF's own form. What the collector asked is read from sushy-static's
request log.

Thresholds: public-smartnic's card chassis (`Card1`), whose ThermalMetrics reading names the
`CardTemp` Sensor with `Thresholds`; compared with the legacy Thermal thresholds of
public-rackmount1 (tests/data/upstream/redfish/README.md cites both).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.base import TargetResult
from collectors.redfish import LogCursor, RedfishCollector, RedfishTarget
from collectors.redfish_readers import sensor_state, severity
from collectors.redfish_store import log_cursors, persist_redfish
from fleet.models import Node, NodeEvent
from tests.factories import World
from tests.fleet_helpers import make_node_row
from tests.peer_fixtures import REDFISH_MOCKUP, TOWER, TOWER_SYSTEM, tower
from tests.peers.harness import running_peer

ENTRIES = f"{TOWER_SYSTEM}/LogServices/Log1/Entries"
LOG = f"{TOWER_SYSTEM}/LogServices/Log1"
PROCESSORS = f"{TOWER_SYSTEM}/Processors"
SMARTNIC = TOWER.parent / "public-smartnic"
CARD_SYSTEM = "/redfish/v1/Systems/Card1-SoC"


class PagedTower:
    """sushy-static serving a tmp copy of public-tower with paged collections (module docstring)."""

    def __init__(self, root: Path, state: Path, url: str) -> None:
        self.root, self.state, self.url = root, state, url

    def write(self, path: str, resource: dict[str, Any]) -> None:
        """Serve `resource` at `path` (a Redfish path, a query allowed) from now on."""
        folder = self.root / path.removeprefix("/redfish/v1").strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.json").write_text(json.dumps(resource, indent=4))

    def asked(self, fragment: str) -> int:
        """How many GETs sushy-static logged of a path containing `fragment`."""
        return sum(1 for line in (self.state / "sushy-static.log").read_text().splitlines()
                   if '"GET ' in line and fragment in line)

    def poll(self, cursor: LogCursor | None = None, **options: Any) -> TargetResult:
        with RedfishCollector([RedfishTarget("tower", self.url, system=TOWER_SYSTEM)], **options) as collector:
            [result] = collector.collect(log_cursors={"tower": {LOG: cursor}} if cursor else None)
        return result


def page(collection: dict[str, Any], members: list[dict[str, Any]], next_link: str | None) -> dict[str, Any]:
    """A page of `collection`: its own properties, `members`, and the next page's link (DSP0266)."""
    out = {k: v for k, v in collection.items() if k not in {"Members", "@odata.nextLink"}}
    out.update({"Members": members, "Members@odata.count": len(members)})
    if next_link:
        out["Members@odata.nextLink"] = next_link
    return out


@pytest.fixture
def paged(tmp_path: Path) -> Iterator[PagedTower]:
    root = tmp_path / "public-tower"
    shutil.copytree(TOWER, root)  # the test's own copy: the vendored mockup is never written
    with running_peer("redfish", tmp_path / "state", str(root)) as url:
        served = PagedTower(root, tmp_path / "state", url)
        entries = tower(ENTRIES)
        newest, oldest = sorted(entries["Members"], key=lambda e: e["Created"], reverse=True)
        served.write(ENTRIES, page(entries, [newest], f"{ENTRIES}?$skiptoken=1"))
        served.write(f"{ENTRIES}?$skiptoken=1", page(entries, [oldest], None))
        processors = tower(PROCESSORS)
        served.write(PROCESSORS, page(processors, processors["Members"][:8], f"{PROCESSORS}?$skip=8"))
        served.write(f"{PROCESSORS}?$skip=8", page(processors, processors["Members"][8:], None))
        yield served


def logged(result: TargetResult) -> list[str]:
    return [s.labels["id"] for s in result.samples if s.metric == "redfish_log_entry"]


def test_every_page_is_read_and_each_entry_once(paged: PagedTower) -> None:
    oldest, newest = (e["@odata.id"] for e in sorted(tower(ENTRIES)["Members"], key=lambda e: e["Created"]))
    result = paged.poll()
    assert result.ok and result.error is None, result.error
    assert logged(result) == [oldest, newest]  # both pages, oldest first
    gpus = [s.labels["id"] for s in result.samples if s.metric == "redfish_gpu_info"]
    assert tower(PROCESSORS)["Members"][8:] == [{"@odata.id": f"{PROCESSORS}/{g}"} for g in ("GPU1", "GPU2")]
    assert gpus == ["GPU1", "GPU2"]  # listed on the Processors' second page only
    assert paged.asked("Entries?$skiptoken=1") == 1 and paged.asked("Processors?$skip=8") == 1

    # a BMC whose last page links back to the first: read once, each entry still once
    entries = tower(ENTRIES)
    paged.write(f"{ENTRIES}?$skiptoken=1", page(entries, [entries["Members"][0]], ENTRIES))
    assert logged(paged.poll()) == [oldest, newest]


def test_pages_are_bounded_and_stop_at_the_stored_entry(paged: PagedTower) -> None:
    oldest, newest = sorted(tower(ENTRIES)["Members"], key=lambda e: e["Created"])
    assert logged(paged.poll(max_log_pages=1)) == [newest["@odata.id"]]  # the newest page only
    assert paged.asked("Entries?$skiptoken=1") == 0

    # the newest entry is stored: page one reaches it, so page two is never asked
    stored = paged.poll(LogCursor(newest["@odata.id"], newest["Created"]))
    assert (stored.error, logged(stored), paged.asked("Entries?$skiptoken=1")) == (None, [], 0)
    # the oldest is stored: page one holds only newer ones, page two reaches it
    assert logged(paged.poll(LogCursor(oldest["@odata.id"], oldest["Created"]))) == [newest["@odata.id"]]
    assert paged.asked("Entries?$skiptoken=1") == 1


def test_a_failing_next_page_keeps_the_entries_read_and_says_so(paged: PagedTower) -> None:
    shutil.rmtree(paged.root / ENTRIES.removeprefix("/redfish/v1/").replace("Entries", "Entries?$skiptoken=1"))
    newest = max(tower(ENTRIES)["Members"], key=lambda e: e["Created"])
    result = paged.poll()
    assert result.ok and logged(result) == [newest["@odata.id"]]
    assert result.error == f"log: the BMC has no {paged.url}{ENTRIES}?$skiptoken=1 (HTTP 404)"


def test_polls_of_a_paged_log_store_each_entry_once(paged: PagedTower, engine: Engine, world: World) -> None:
    node = make_node_row(world, gpus=0, name="tower")
    for _ in range(2):
        with Session(engine) as session, session.begin():
            cursors = log_cursors(session, session.exec(select(Node).where(Node.id == node.id)).all())
            cursor = cursors.get("tower", {}).get(LOG)
            persist_redfish(session, [paged.poll(cursor)])
    with Session(engine) as session:
        events = session.exec(select(NodeEvent).where(NodeEvent.node_id == node.id)
                              .order_by(NodeEvent.id.desc())).all()
    entries = sorted(tower(ENTRIES)["Members"], key=lambda e: e["Created"], reverse=True)
    assert [e.message for e in events] == [f"Critical: {e['Message']} ({e['MessageId']})" for e in entries]
    assert paged.asked("Entries?$skiptoken=1") == 1  # the second poll stopped at page one


# -- the new shape's thresholds ------------------------------------------------------------


def smartnic(path: str) -> dict[str, Any]:
    return json.loads((SMARTNIC / path.removeprefix("/redfish/v1").strip("/") / "index.json").read_text())


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TargetResult]:
    with running_peer("redfish", tmp_path_factory.mktemp("smartnic"), str(SMARTNIC)) as url:
        with RedfishCollector([RedfishTarget("card", url, system=CARD_SYSTEM)]) as collector:
            [result] = collector.collect()
    yield result


def test_thermal_metrics_state_comes_from_the_sensor_thresholds(card: TargetResult) -> None:
    [reading] = smartnic("Chassis/Card1/ThermalSubsystem/ThermalMetrics")["TemperatureReadingsCelsius"]
    sensor = smartnic(reading["DataSourceUri"])
    # hand-checked in public-smartnic/Chassis/Card1/Sensors/CardTemp/index.json
    assert (reading["DeviceName"], reading["Reading"], sensor["Thresholds"]["UpperCaution"]["Reading"]) == (
        "Internal", 37, 42)
    temps = [(s.metric, dict(s.labels), s.value) for s in card.samples if s.metric.startswith("ipmi_temperature")]
    labels = {"id": "CardTemp", "name": "Internal"}
    assert temps == [("ipmi_temperature_celsius", labels, 37.0), ("ipmi_temperature_state", labels, 0.0)]


@pytest.mark.parametrize(("value", "state"), [(39, 0.0), (42, 1.0), (44, 1.0), (45, 2.0), (50, 2.0), (-1, 0.0)])
def test_new_and_legacy_thresholds_give_the_same_states(value: float, state: float) -> None:
    # UpperCaution 42, UpperCritical 45, UpperFatal 50 (and UpperCautionUser 40: 40 to 42 is 1 here, 0 legacy)
    sensor = smartnic("/redfish/v1/Chassis/Card1/Sensors/CardTemp")
    legacy = json.loads((REDFISH_MOCKUP / "Chassis/1U/Thermal/index.json").read_text())["Temperatures"][0]
    assert (legacy["Name"], legacy["UpperThresholdNonCritical"], legacy["UpperThresholdCritical"]) == (
        "CPU1 Temp", 42, 45)  # the same limits, the legacy way
    assert sensor_state(value, sensor) == severity(value, legacy) == state


def test_the_sensor_health_and_a_missing_sensor() -> None:
    sensor = smartnic("/redfish/v1/Chassis/Card1/Sensors/CardTemp")
    assert sensor_state(37, {**sensor, "Status": {"State": "Enabled", "Health": "Critical"}}) == 2.0
    assert sensor_state(43, {**sensor, "Status": {"State": "Enabled", "Health": "OK"}}) == 1.0  # the worse one
    assert sensor_state(37, {"Status": {"Health": "Warning"}}) == 1.0  # health alone
    assert math.isnan(sensor_state(37, {})) and math.isnan(sensor_state(37, None))
