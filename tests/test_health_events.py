"""Node events from collector results (collectors.health_events through `persist_results`): one per
transition of a sensor's threshold state, of a BMC that had answered, and per new XID error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from collectors.base import Sample, TargetResult
from collectors.models import CollectorTargetState, GpuXidEvent
from collectors.store import persist_results
from fleet.models import Gpu, NodeEvent
from tests.factories import World
from tests.fleet_helpers import lease_node, make_node_row

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
BMC_ERROR = "no response within 2.0 s from 10.0.0.9:623"  # names the BMC's address: never in an event


def poll(engine: Engine, collector: str, results: list[TargetResult], at: datetime) -> None:
    """One cycle of `collector`, stored as the worker stores it."""
    with Session(engine) as session, session.begin():
        persist_results(session, collector, results, now=at)


def events(engine: Engine, node_id: int, kind: str) -> list[tuple[datetime, str, str]]:
    """(at, message, actor) of the node's events of `kind`, oldest first."""
    with Session(engine) as session:
        rows = session.exec(select(NodeEvent).where(NodeEvent.node_id == node_id, NodeEvent.kind == kind)
                            .order_by(col(NodeEvent.id))).all()
    return [(e.at, e.message, e.actor) for e in rows]


def bmc(node: str, ok: bool) -> TargetResult:
    return TargetResult(node, ok=True, samples=[]) if ok else TargetResult(node, ok=False, error=BMC_ERROR, timed_out=True)


def test_a_bmc_that_stops_answering_and_comes_back_is_one_event_each_way(engine: Engine, world: World) -> None:
    flaky, dead = make_node_row(world, gpus=0, name="gpu-301"), make_node_row(world, gpus=0, name="gpu-302")
    answers = (True, False, False, False, True, True, False)
    for minute, ok in enumerate(answers):
        poll(engine, "ipmi", [bmc("gpu-301", ok), bmc("gpu-302", False)], T0 + timedelta(minutes=minute))
    assert events(engine, flaky.id, "bmc") == [
        (T0 + timedelta(minutes=1), "BMC stopped answering the ipmi collector", "ipmi"),  # failing again: no new event
        (T0 + timedelta(minutes=4), "BMC answers the ipmi collector again, after 3 failed polls", "ipmi"),
        (T0 + timedelta(minutes=6), "BMC stopped answering the ipmi collector", "ipmi"),
    ]
    assert events(engine, dead.id, "bmc") == []  # never answered: nothing was lost
    # a GPU exporter's scrape target failing is no node's BMC
    poll(engine, "dcgm", [TargetResult("prometheus", ok=True, samples=[])], T0)
    poll(engine, "dcgm", [TargetResult("prometheus", ok=False, error="connection refused")], T0 + timedelta(minutes=1))
    with Session(engine) as session:
        assert session.exec(select(NodeEvent).where(NodeEvent.actor == "dcgm")).all() == []


def test_a_bmc_not_polled_this_cycle_keeps_its_state_and_makes_no_event(engine: Engine, world: World) -> None:
    node = make_node_row(world, gpus=0, name="gpu-303")
    poll(engine, "ipmi", [bmc("gpu-303", True)], T0)
    busy = TargetResult("gpu-303", ok=False, error="the previous poll of this BMC is still running", polled=False)
    poll(engine, "ipmi", [busy], T0 + timedelta(minutes=1))
    assert events(engine, node.id, "bmc") == []
    with Session(engine) as session:
        state = session.exec(select(CollectorTargetState).where(CollectorTargetState.target == "gpu-303")).one()
    assert (state.up, state.consecutive_failures, state.last_error) == (True, 0, None)
    poll(engine, "ipmi", [bmc("gpu-303", False)], T0 + timedelta(minutes=2))  # a real failure still is one
    assert [message for _, message, _ in events(engine, node.id, "bmc")] == ["BMC stopped answering the ipmi collector"]


def test_sensor_threshold_crossings_are_recorded_once_per_change(engine: Engine, world: World) -> None:
    node = make_node_row(world, gpus=0, name="gpu-311")
    cpu, inlet = {"id": "3", "name": "CPU Temp"}, {"id": "9", "name": "Inlet Temp"}

    def reading(sensor: dict, celsius: float, state: float, at: datetime) -> list[Sample]:
        return [Sample("ipmi", "gpu-311", "ipmi_temperature_celsius", celsius, "celsius", sensor, at),
                Sample("ipmi", "gpu-311", "ipmi_temperature_state", state, "state", sensor, at)]

    cpu_polls = ((60.0, 0), (84.0, 1), (85.0, 1), (96.0, 2), (70.0, 0), (71.0, 0))
    for minute, (celsius, state) in enumerate(cpu_polls):
        at = T0 + timedelta(minutes=minute)
        samples = reading(cpu, celsius, state, at) + reading(inlet, 45.0, 1, at)  # inlet: warning from its first poll on
        poll(engine, "ipmi", [TargetResult("gpu-311", ok=True, samples=samples)], at)
    assert events(engine, node.id, "sensor") == [
        (T0, "Sensor Inlet Temp is warning at its first reading (45 celsius)", "ipmi"),
        (T0 + timedelta(minutes=1), "Sensor CPU Temp went from ok to warning (84 celsius)", "ipmi"),
        (T0 + timedelta(minutes=3), "Sensor CPU Temp went from warning to critical (96 celsius)", "ipmi"),
        (T0 + timedelta(minutes=4), "Sensor CPU Temp went from critical to ok (70 celsius)", "ipmi"),
    ]


def test_each_new_xid_is_one_timeline_row_and_one_event(engine: Engine, world: World) -> None:
    node = make_node_row(world, gpus=0, name="gpu-321")
    world.session.add(Gpu(node_id=node.id, index=2, uuid="GPU-5fd4b5a1-9c1e-4b7e-8c1d-0a1b2cc0ffee",
                          model="NVIDIA H100 80GB HBM3"))
    world.session.commit()
    uuid = "GPU-5fd4b5a1-9c1e-4b7e-8c1d-0a1b2cc0ffee"
    for minute, code in enumerate((0.0, 79.0, 79.0, 79.0, 48.0, 48.0)):  # DCGM reports the last XID on every scrape
        at = T0 + timedelta(minutes=minute)
        poll(engine, "dcgm", [TargetResult("prometheus", ok=True, samples=[
            Sample("dcgm", uuid, "gpu_last_xid", code, "code", {"gpu": "2"}, at)])], at)
    with Session(engine) as session:
        xids = [(x.entity, x.node_id, x.at, x.code) for x in session.exec(select(GpuXidEvent).order_by(col(GpuXidEvent.id)))]
    assert xids == [(uuid, node.id, T0 + timedelta(minutes=1), 79), (uuid, node.id, T0 + timedelta(minutes=4), 48)]
    assert events(engine, node.id, "xid") == [
        (T0 + timedelta(minutes=1), "GPU 2 · NVIDIA H100 80GB HBM3 · …c0ffee: XID 79 — GPU has fallen off the bus", "dcgm"),
        (T0 + timedelta(minutes=4), "GPU 2 · NVIDIA H100 80GB HBM3 · …c0ffee: XID 48 — Double Bit ECC Error", "dcgm"),
    ]


def test_tenants_read_bmc_events_of_their_leased_nodes_only(engine: Engine, world: World, client: TestClient) -> None:
    mine, theirs = make_node_row(world, gpus=0, name="gpu-331"), make_node_row(world, gpus=0, name="gpu-332")
    world.session.add(NodeEvent(node_id=mine.id, kind="operation", message="deployed for its previous holder",
                                actor="ops-admin", at=T0 - timedelta(hours=2)))  # before tenant a's lease
    recorded = {"created_at": T0 - timedelta(hours=2)}
    lease_node(world, mine.id, "a", **recorded)
    lease_node(world, theirs.id, "b", **recorded)
    for minute, ok in enumerate((True, False)):
        poll(engine, "ipmi", [bmc("gpu-331", ok), bmc("gpu-332", ok)], T0 + timedelta(minutes=minute))
    own = client.get(f"/api/v1/nodes/{mine.id}/events", headers=world.headers("a_member"))
    assert own.status_code == 200
    assert [(e["kind"], e["message"], e["actor"]) for e in own.json()] == [
        ("bmc", "BMC stopped answering the ipmi collector", "")]  # not the node's life before the lease, nor who
    admin = client.get(f"/api/v1/nodes/{mine.id}/events", headers=world.headers("admin")).json()
    assert [(e["kind"], e["actor"]) for e in admin][-1] == ("operation", "ops-admin")
    assert "10.0.0.9" not in own.text
    refused = client.get(f"/api/v1/nodes/{theirs.id}/events", headers=world.headers("a_member"))
    assert refused.status_code == 404 and refused.headers["content-type"] == "application/problem+json"
    assert [e["kind"] for e in client.get(f"/api/v1/nodes/{theirs.id}/events", headers=world.headers("b_admin")).json()] == [
        "bmc"]
