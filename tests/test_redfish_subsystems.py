"""The Redfish collector's newer shapes, read from sushy-tools' `sushy-static` serving DMTF's
public-tower mockup (tests/data/upstream/redfish/): EnvironmentMetrics, PowerSubsystem with its
power supplies, ThermalSubsystem, GPU Processors and the system log; then how they are stored:
energy metering preferring the BMC's counter (and saying so), the GPU inventory matched to
DCGM's GPUs, and log entries stored once. Expected values are read from the mockup files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.base import Sample, TargetResult
from collectors.models import NodeEnergyHour
from collectors.redfish import LogCursor, RedfishCollector, RedfishTarget
from collectors.redfish_readers import new_entries
from collectors.redfish_store import persist_redfish, sync_gpus, vendor_of
from collectors.store import persist_results
from fleet.models import Gpu, NodeEvent
from tests.factories import World
from tests.fleet_helpers import make_node_row
from tests.peer_fixtures import TOWER_SYSTEM, tower, tower_log_gap, tower_url  # noqa: F401 (a fixture)

SYSTEM = TOWER_SYSTEM
LOG = f"{SYSTEM}/LogServices/Log1"
T0 = datetime(2026, 10, 1, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def result(tower_url: str) -> TargetResult:
    with RedfishCollector([RedfishTarget("tower", tower_url, "admin", "pw", system=SYSTEM)]) as collector:
        [found] = collector.collect()
    return found


def by_name(result: TargetResult, metric: str) -> dict[str, float]:
    return {s.labels.get("name", ""): s.value for s in result.samples if s.metric == metric}


def test_power_comes_from_environment_metrics_and_the_supplies(result: TargetResult, tower_url: str) -> None:
    assert result.ok and result.error == tower_log_gap(tower_url) and result.skipped == {}
    environment = tower("Chassis/Tower/EnvironmentMetrics")
    assert by_name(result, "ipmi_dcmi_power_consumption_watts") == {"": environment["PowerWatts"]["Reading"]}
    legacy = tower("Chassis/Tower/Power")["PowerControl"][0]["PowerConsumedWatts"]
    assert legacy != environment["PowerWatts"]["Reading"]  # the legacy resource was not the one read
    supplies = {}
    for member in tower("Chassis/Tower/PowerSubsystem/PowerSupplies")["Members"]:
        supply = tower(member["@odata.id"])
        supplies[supply["Name"]] = (supply, tower(supply["Metrics"]["@odata.id"]))
    assert by_name(result, "redfish_psu_input_watts") == {
        name: metrics["InputPowerWatts"]["Reading"] for name, (_, metrics) in supplies.items()}
    assert by_name(result, "redfish_psu_health_state") == {
        name: {"OK": 0.0, "Warning": 1.0}[supply["Status"]["Health"]] for name, (supply, _) in supplies.items()}
    [energy] = [s for s in result.samples if s.metric == "redfish_energy_kwh"]
    assert "EnergykWh" not in environment  # so the supplies' counters are summed
    assert energy.value == sum(m["EnergykWh"]["Reading"] for _, m in supplies.values())
    assert (energy.unit, dict(energy.labels)) == ("kwh", {"from": "PowerSupplies"})


def test_thermal_comes_from_the_thermal_subsystem(result: TargetResult) -> None:
    readings = tower("Chassis/Tower/ThermalSubsystem/ThermalMetrics")["TemperatureReadingsCelsius"]
    assert by_name(result, "ipmi_temperature_celsius") == {r["DeviceName"]: r["Reading"] for r in readings}
    sensors = {r["DeviceName"]: tower(r["DataSourceUri"]) for r in readings}  # the Sensors the readings name
    assert not any("Thresholds" in s for s in sensors.values())  # their health alone gives the state
    assert by_name(result, "ipmi_temperature_state") == {
        name: {"OK": 0.0, "Warning": 1.0, "Critical": 2.0}[s["Status"]["Health"]] for name, s in sensors.items()}
    fans = [tower(m["@odata.id"]) for m in tower("Chassis/Tower/ThermalSubsystem/Fans")["Members"]]
    assert by_name(result, "ipmi_fan_speed_ratio") == {f["Name"]: f["SpeedPercent"]["Reading"] / 100 for f in fans}
    assert by_name(result, "ipmi_fan_speed_rpm") == {
        f["Name"]: f["SpeedPercent"]["SpeedRPM"] for f in fans if "SpeedRPM" in f["SpeedPercent"]}
    assert len(by_name(result, "ipmi_fan_speed_rpm")) == len(fans) - 1  # "Fan for CPU 1" gives only a percentage


def test_gpus_and_log_entries(result: TargetResult) -> None:
    processors = [tower(m["@odata.id"]) for m in tower(f"{SYSTEM}/Processors")["Members"]]
    gpus = [p for p in processors if p["ProcessorType"] == "GPU"]
    assert len(processors) == 10 and len(gpus) == 2
    found = [dict(s.labels) for s in result.samples if s.metric == "redfish_gpu_info"]
    assert found == [{"id": p["Id"], "model": p["Model"], "vendor": p["Manufacturer"], "serial": "", "uuid": "",
                      "memory_mib": str(p["MemorySummary"]["TotalMemorySizeMiB"])} for p in gpus]
    entries = tower(f"{LOG}/Entries")["Members"]
    logged = [s for s in result.samples if s.metric == "redfish_log_entry"]
    assert [(s.labels["id"], s.labels["message"], s.value) for s in logged] == [
        (e["@odata.id"], e["Message"], 2.0) for e in sorted(entries, key=lambda e: e["Created"])]


def test_a_poll_with_a_cursor_reads_only_newer_entries(tower_url: str) -> None:
    entries = sorted(tower(f"{LOG}/Entries")["Members"], key=lambda e: e["Created"])
    with RedfishCollector([RedfishTarget("tower", tower_url, system=SYSTEM)]) as collector:
        [after_first] = collector.collect(log_cursors={"tower": {LOG: LogCursor(entries[0]["@odata.id"], entries[0]["Created"])}})
        [after_last] = collector.collect(log_cursors={"tower": {LOG: LogCursor(entries[-1]["@odata.id"], entries[-1]["Created"])}})
    assert [s.labels["id"] for s in after_first.samples if s.metric == "redfish_log_entry"] == [entries[1]["@odata.id"]]
    assert [s for s in after_last.samples if s.metric == "redfish_log_entry"] == []


def test_new_entries_after_a_cleared_or_wrapped_log() -> None:
    entries = [{"@odata.id": f"/e/{i}", "Id": str(i), "Created": f"2026-01-01T00:{i:02d}:00Z"} for i in (2, 10, 9)]
    assert [e["Id"] for e in new_entries(entries, None, None)] == ["2", "9", "10"]  # oldest first, 10 after 9
    assert [e["Id"] for e in new_entries(entries, "/e/9", "2026-01-01T00:09:00Z")] == ["10"]
    # the stored entry is gone (the log wrapped): only what was created after it
    assert [e["Id"] for e in new_entries(entries, "/e/5", "2026-01-01T00:05:00Z")] == ["9", "10"]
    links = [{"@odata.id": f"/e/{i}"} for i in (1, 2, 11)]  # members listed as links only: by Id order
    assert [e["@odata.id"] for e in new_entries(links, "/e/2", "")] == ["/e/11"]


def counter(node: str, kwh: float, ts: datetime) -> Sample:
    return Sample("redfish", node, "redfish_energy_kwh", kwh, "kwh", {"from": "PowerSupplies"}, ts)


def watts(node: str, value: float, ts: datetime) -> Sample:
    return Sample("redfish", node, "ipmi_dcmi_power_consumption_watts", value, "watts", {}, ts)


def test_energy_prefers_the_counter_and_says_which(engine: Engine, world: World) -> None:
    node = make_node_row(world, gpus=0, name="rf-energy")
    polls = [  # (minute, counter kWh, watts)
        (0, 100.0, 1000.0),  # first readings: nothing to add yet
        (10, 100.25, 1000.0),  # the counter: 0.25 kWh (the watts would say 0.166667)
        (20, 100.5, 1000.0),  # 0.25 kWh
        (25, 3.0, 1200.0),  # the counter went down (a reset): the watts stand in, 1100 W x 5 min
        (35, 3.1, 1200.0),  # the counter again, from its new base: 0.1 kWh, half of it after 10:00
        (40, None, 1200.0),  # no counter this poll: watts, 1200 W x 5 min
        (100, 3.5, 1200.0),  # 60 min later: a gap longer than max_gap, nothing is guessed
        (101, 3.52, 1200.0),  # 0.02 kWh at 11:11
    ]
    with Session(engine) as session, session.begin():
        for minute, kwh, draw in polls:
            at = T0 + timedelta(minutes=minute)
            samples = [watts("rf-energy", draw, at)] + ([counter("rf-energy", kwh, at)] if kwh is not None else [])
            persist_results(session, "redfish", [TargetResult("rf-energy", ok=True, samples=samples)])
    with Session(engine) as session:
        rows = {r.hour.hour: r for r in session.exec(select(NodeEnergyHour).where(NodeEnergyHour.node_id == node.id))}
    assert {h: (r.kwh, r.covered_seconds, r.method) for h, r in rows.items()} == {
        9: (Decimal("0.25") + Decimal("0.25") + Decimal("0.091667") + Decimal("0.05"), 1800, "mixed"),
        10: (Decimal("0.05") + Decimal("0.1"), 600, "mixed"),
        11: (Decimal("0.020000"), 60, "counter"),
    }


def test_gpu_inventory_matches_dcgm_gpus_by_uuid_then_index(engine: Engine, world: World) -> None:
    node = make_node_row(world, gpus=0, name="rf-gpus")
    with Session(engine) as session, session.begin():
        session.add(Gpu(node_id=node.id, index=0, model="from DCGM", uuid="GPU-aaaa-1111"))
        session.add(Gpu(node_id=node.id, index=1, model="from DCGM", uuid="GPU-bbbb-2222"))
        session.add(Gpu(node_id=node.id, index=3, model="from ROCm", vendor="amd", uuid="692251001124"))

    def gpu(ident: str, uuid: str = "", serial: str = "", model: str = "NVIDIA H100 80GB HBM3") -> Sample:
        labels = {"id": ident, "model": model, "vendor": "NVIDIA Corporation", "serial": serial, "uuid": uuid,
                  "memory_mib": "81559"}
        return Sample("redfish", "rf-gpus", "redfish_gpu_info", 1.0, "info", labels, T0)

    # Redfish lists GPU_1's UUID as BBBB (no GPU- prefix, upper case) first; GPU_0 without one; a GPU
    # whose serial is the one AMD's exporter named a GPU by; and a new GPU
    found = [gpu("GPU_1", "BBBB-2222"), gpu("GPU_0"), gpu("GPU_2", serial="692251001124"), gpu("GPU_3", "cccc-3333")]
    for _ in range(2):  # a second poll changes nothing
        with Session(engine) as session, session.begin():
            sync_gpus(session, node.id, found)
    with Session(engine) as session:
        rows = session.exec(select(Gpu).where(Gpu.node_id == node.id).order_by(Gpu.index)).all()
    assert [(r.index, r.uuid, r.model, r.memory_mib) for r in rows] == [
        (0, "GPU-aaaa-1111", "NVIDIA H100 80GB HBM3", 81559),
        (1, "GPU-bbbb-2222", "NVIDIA H100 80GB HBM3", 81559),
        (3, "692251001124", "NVIDIA H100 80GB HBM3", 81559),  # matched by serial, not by its index (2)
        (4, "cccc-3333", "NVIDIA H100 80GB HBM3", 81559)]  # index 3 is taken: the next free one
    assert [vendor_of(v) for v in ("Nvidia(R) Corporation", "Advanced Micro Devices, Inc.", "Contoso")] == [
        "nvidia", "amd", "contoso"]


def test_log_entries_become_node_events_newest_first(engine: Engine, world: World, result: TargetResult) -> None:
    node = make_node_row(world, gpus=0, name="tower")
    with Session(engine) as session, session.begin():
        persist_redfish(session, [result])
    with Session(engine) as session:
        events = session.exec(select(NodeEvent).where(NodeEvent.node_id == node.id)
                               .order_by(NodeEvent.id.desc())).all()
        gpus = session.exec(select(Gpu).where(Gpu.node_id == node.id)).all()
    entries = sorted(tower(f"{LOG}/Entries")["Members"], key=lambda e: e["Created"], reverse=True)
    assert [(e.kind, e.message, e.at) for e in events] == [
        ("bmc_log", f"Critical: {e['Message']} ({e['MessageId']})", datetime.fromisoformat(e["Created"]))
        for e in entries]
    assert len(gpus) == 2


def test_a_log_entry_dated_ahead_of_the_poll_is_dated_at_the_poll(engine: Engine, world: World) -> None:
    node = make_node_row(world, gpus=0, name="rf-clock")
    labels = {"id": f"{LOG}/Entries/7", "created": "2099-01-01T00:00:00Z", "severity": "Warning", "log": LOG,
              "message": "Fan  1\n failed", "code": ""}
    entry = Sample("redfish", "rf-clock", "redfish_log_entry", 1.0, "state", labels, T0)
    with Session(engine) as session, session.begin():
        persist_redfish(session, [TargetResult("rf-clock", ok=True, samples=[entry])])
    with Session(engine) as session:
        [event] = session.exec(select(NodeEvent).where(NodeEvent.node_id == node.id)).all()
    assert (event.at, event.message) == (T0, "Warning: Fan 1 failed")  # a BMC clock ahead cannot date it later
