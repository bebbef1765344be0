"""GET /api/v1/nodes/{id}/health: tenants see their leased nodes' health, and only theirs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlmodel import Session

from collectors.base import Sample, TargetResult
from collectors.store import persist_results
from fleet.models import Gpu
from tests.factories import World
from tests.fleet_helpers import lease_node, make_node_row

NOW = datetime.now(UTC).replace(microsecond=0)


def collected(engine: Engine, node: str, *, ok: bool = True) -> None:
    """One IPMI poll and one DCGM reading of `node`, stored the way the worker stores them."""
    temp = {"id": "4", "name": "GPU1 Temp"}
    fan = {"id": "6", "name": "FAN1"}
    ipmi = [
        Sample("ipmi", node, "ipmi_chassis_power_state", 1.0, "state", {}, NOW),
        Sample("ipmi", node, "ipmi_dcmi_power_consumption_watts", 3200.0, "watts", {}, NOW),
        Sample("ipmi", node, "ipmi_temperature_celsius", 91.0, "celsius", temp, NOW),
        Sample("ipmi", node, "ipmi_temperature_state", 2.0, "state", temp, NOW),
        Sample("ipmi", node, "ipmi_fan_speed_rpm", 9000.0, "rpm", fan, NOW),
        Sample("ipmi", node, "ipmi_fan_speed_state", 0.0, "state", fan, NOW),
    ]
    gpu = [Sample("dcgm", f"GPU-{node}-0", "gpu_util", 87.0, "percent", {"gpu": "0"}, NOW - timedelta(seconds=5))]
    results = [TargetResult(node, ok=True, samples=ipmi) if ok else
               TargetResult(node, ok=False, error="no response within 2.0 s from 10.0.0.9:623", timed_out=True)]
    with Session(engine) as session, session.begin():
        persist_results(session, "ipmi", results)
        persist_results(session, "dcgm", [TargetResult("prometheus", ok=True, samples=gpu)])


def test_health_shows_power_sensors_and_gpus(engine: Engine, world: World, client: TestClient) -> None:
    node = make_node_row(world, gpus=0, name="gpu-101")
    world.session.add(Gpu(node_id=node.id, index=0, uuid="GPU-gpu-101-0", model="NVIDIA H100 80GB HBM3"))
    world.session.commit()
    collected(engine, "gpu-101")
    body = client.get(f"/api/v1/nodes/{node.id}/health", headers=world.headers("admin")).json()
    assert (body["node"], body["bmc_up"], body["power_on"], body["power_watts"], body["worst_state"]) == (
        "gpu-101", True, True, 3200.0, "critical")
    assert {(s["name"], s["value"], s["unit"], s["state"]) for s in body["sensors"]} == {
        ("GPU1 Temp", 91.0, "celsius", "critical"), ("FAN1", 9000.0, "rpm", "nominal")}
    assert body["gpus"] == [{"uuid": "GPU-gpu-101-0", "index": 0, "model": "NVIDIA H100 80GB HBM3",
                             "values": {"gpu_util": 87.0},
                             "observed_at": (NOW - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")}]


def test_tenants_see_only_their_leased_nodes_health(engine: Engine, world: World, client: TestClient) -> None:
    mine, theirs, idle = (make_node_row(world, gpus=0, name=n) for n in ("gpu-201", "gpu-202", "gpu-203"))
    lease_node(world, mine.id, "a")
    lease_node(world, theirs.id, "b")
    for node in ("gpu-201", "gpu-202", "gpu-203"):
        collected(engine, node, ok=node != "gpu-201")
    own = client.get(f"/api/v1/nodes/{mine.id}/health", headers=world.headers("a_member"))
    assert own.status_code == 200
    # a tenant learns the BMC is down, not the BMC's address from the error text
    assert (own.json()["bmc_up"], own.json()["bmc_error"]) == (False, "the BMC does not answer")
    admin = client.get(f"/api/v1/nodes/{mine.id}/health", headers=world.headers("admin")).json()
    assert admin["bmc_error"] == "no response within 2.0 s from 10.0.0.9:623"
    for node in (theirs, idle):
        refused = client.get(f"/api/v1/nodes/{node.id}/health", headers=world.headers("a_member"))
        assert refused.status_code == 404
        assert refused.headers["content-type"] == "application/problem+json"
    assert client.get(f"/api/v1/nodes/{theirs.id}/health", headers=world.headers("b_admin")).json()["power_watts"] == 3200.0
    assert client.get(f"/api/v1/nodes/{mine.id}/health").status_code == 401


def test_metrics_name_lease_holders_and_namespace_tenants(engine: Engine, world: World, client: TestClient) -> None:
    leased = make_node_row(world, gpus=8, name="gpu-401")
    make_node_row(world, gpus=8, name="gpu-402")  # not leased: not exported
    lease_node(world, leased.id, "a")
    now = datetime.now(UTC)  # fresh: /metrics leaves out readings older than three IPMI intervals
    namespaces = [Sample("kubernetes", ns, "kiln_k8s_namespace_tenant", 1.0, "info", {"namespace": ns, "tenant": t}, now)
                  for ns, t in (("team-a", "tenant-a"), ("scratch", ""))]
    with Session(engine) as session, session.begin():
        persist_results(session, "kubernetes", [TargetResult("https://kube:6443", ok=True, samples=namespaces)])
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert [(s.labels, s.value) for s in families["kiln_lease_gpus"].samples] == [
        ({"tenant": "tenant-a", "node": "gpu-401"}, 8.0)]
    assert [s.labels for s in families["kiln_namespace_tenant_info"].samples] == [
        {"namespace": "team-a", "tenant": "tenant-a"}]
