"""Firmware inventory over Redfish, read from a service nobody here wrote: sushy-tools'
`sushy-static` (tests/peers/redfish.sh) serving DMTF's public-rackmount1 mockup with its
`UpdateService/FirmwareInventory` (tests/data/upstream/redfish/, cited there). Every label is
compared with the member's JSON read here on its own, and a poll lands in `node.facts["firmware"]`."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.base import TargetResult
from collectors.models import HealthSnapshot
from collectors.redfish import RedfishError
from collectors.redfish_firmware import FIRMWARE_METRIC, component_of, firmware_samples
from collectors.store import persist_results
from fleet.models import Node
from tests.factories import World
from tests.fleet_helpers import make_node_row
from tests.peer_fixtures import REDFISH_MOCKUP, poll_mockup, redfish_mockup_url  # noqa: F401 (a fixture)

INVENTORY = REDFISH_MOCKUP / "UpdateService" / "FirmwareInventory"
POLLED_AT = datetime(2026, 11, 3, 8, 15, tzinfo=UTC)


def member(name: str) -> dict:
    """A FirmwareInventory member as the mockup's file holds it."""
    return json.loads((INVENTORY / name / "index.json").read_text())


@pytest.fixture(scope="module")
def polled(redfish_mockup_url: str):
    """One poll of the mockup as node `fw-node`."""
    return poll_mockup(redfish_mockup_url, "fw-node", POLLED_AT)


def firmware_of(result) -> dict[str, dict[str, str]]:
    return {s.labels["id"]: dict(s.labels) for s in result.samples if s.metric == FIRMWARE_METRIC}


def test_every_listed_member_is_read_with_its_facts(polled) -> None:
    assert polled.ok and polled.error is not None and "firmware" not in polled.error
    listed = json.loads((INVENTORY / "index.json").read_text())["Members"]
    expected_ids = {entry["@odata.id"].rsplit("/", 1)[1] for entry in listed}
    found = firmware_of(polled)
    assert set(found) == expected_ids == {"BMC", "BIOS", "SS"}  # AC-RoT0 is in the mockup but not listed
    for member_id, labels in found.items():
        raw = member(member_id)
        assert labels["version"] == raw["Version"]
        assert labels["name"] == raw["Name"]
        assert labels["manufacturer"] == raw.get("Manufacturer", "")
        assert labels["software_id"] == raw.get("SoftwareId", "")
        assert labels["updateable"] == str(raw["Updateable"]).lower()
        assert labels["health"] == raw["Status"]["Health"]
        assert labels["related"] == ",".join(item["@odata.id"] for item in raw.get("RelatedItem", []))
    assert {s.unit for s in polled.samples if s.metric == FIRMWARE_METRIC} == {"info"}


def test_components_are_normalised_by_related_item_and_name(polled) -> None:
    found = firmware_of(polled)
    assert found["BMC"]["component"] == "bmc"  # RelatedItem: /redfish/v1/Managers/BMC
    assert found["BIOS"]["component"] == "bios"  # RelatedItem: the ComputerSystem itself
    assert found["SS"]["component"] == "other"  # simple storage under the system: none of the vocabulary
    assert component_of(member("AC-RoT0")) == "other"  # a root of trust, whatever else it names


@pytest.mark.parametrize(("member_id", "component"), [
    # Ids NVIDIA HGX BMCs list (nvfwupd's documentation; nvidia firmware update guides)
    ("HGX_FW_GPU_0", "gpu"), ("HGX_FW_ERoT_GPU_0", "other"), ("FW_BMC_0", "bmc"), ("HGX_FW_BMC_0", "bmc"),
    ("NIC_0", "nic"), ("ConnectX-7 Firmware", "nic"), ("iDRAC", "bmc"), ("System ROM", "bios"), ("CPLD", "other"),
])
def test_naming_rule_on_ids_vendors_use(member_id: str, component: str) -> None:
    assert component_of({"Id": member_id}) == component


def test_an_unreadable_member_is_left_out_and_counted() -> None:
    resources = {"/redfish/v1/UpdateService": {"FirmwareInventory": {"@odata.id": "/inv"}},
                 "/inv": {"Members": [{"@odata.id": "/inv/BMC"}, {"@odata.id": "/inv/gone"}, {}]},
                 "/inv/BMC": member("BMC")}

    def get(path: str) -> dict:
        if path not in resources:
            raise RedfishError(f"the BMC has no {path} (HTTP 404)")
        return resources[path]

    skipped: dict[str, int] = {}
    root = {"UpdateService": {"@odata.id": "/redfish/v1/UpdateService"}}
    samples = firmware_samples(get, root, "n", "redfish", POLLED_AT, skipped, (RedfishError,))
    assert [s.labels["id"] for s in samples] == ["BMC"]
    assert skipped == {"unreadable firmware member": 2}
    assert firmware_samples(get, {}, "n", "redfish", POLLED_AT, skipped, (RedfishError,)) == []  # no UpdateService


def test_a_poll_stores_the_inventory_in_the_node_facts(polled, engine: Engine, world: World) -> None:
    node = make_node_row(world, gpus=0, name="fw-node", facts={"cpu_model": "EPYC"})
    with Session(engine) as session, session.begin():
        persist_results(session, "redfish", [polled])
    with Session(engine) as session:
        facts = session.get(Node, node.id).facts
        snapshot_metrics = set(session.exec(select(HealthSnapshot.metric)).all())
    assert facts["cpu_model"] == "EPYC"  # other facts are kept
    firmware = facts["firmware"]
    assert firmware["read_at"] == "2026-11-03T08:15:00Z"
    assert {k: (v["component"], v["version"]) for k, v in firmware["components"].items()} == {
        "BIOS": ("bios", member("BIOS")["Version"]), "BMC": ("bmc", member("BMC")["Version"]),
        "SS": ("other", member("SS")["Version"])}
    assert FIRMWARE_METRIC not in snapshot_metrics and "ipmi_chassis_power_state" in snapshot_metrics


def test_a_later_poll_replaces_the_inventory_whole(polled, engine: Engine, world: World) -> None:
    node = make_node_row(world, gpus=0, name="fw-node")
    later = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    only_bmc = [s._replace(ts=later) for s in polled.samples if s.labels.get("id") == "BMC"]
    with Session(engine) as session, session.begin():
        persist_results(session, "redfish", [polled])
        persist_results(session, "redfish", [TargetResult("fw-node", ok=True, samples=only_bmc)])
    with Session(engine) as session:
        firmware = session.get(Node, node.id).facts["firmware"]
    assert firmware["read_at"] == "2026-11-03T09:00:00Z" and list(firmware["components"]) == ["BMC"]
