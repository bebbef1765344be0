"""Nodes through the generic API tests, enrolment rules, actions and operations (fake driver)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlmodel import select

from fleet.models import Node, NodeEvent
from tests.api_base import ResourceAPITests, assert_problem
from tests.factories import World
from tests.fleet_helpers import lease_node, node_payload, wait_operations


class TestNodesAPI(ResourceAPITests):
    path = "/api/v1/nodes"
    update_payload = {"rack": "r9", "tags": ["b200", "inference"], "resource_class": "gpu.b200"}
    write_only_fields = frozenset({"bmc_password"})
    invalid_payloads = [
        ({"name": "Not Valid"}, "name"),
        ({"provisioner": "maas"}, "provisioner"),
        ({"bmc_address": "http://10.0.0.1"}, "bmc_address"),
        ({"bmc_address": "ipmi://10.0.0.1:99999"}, "bmc_address"),
        ({"bmc_address": "redfish://10.0.0.1/redfish/v1"}, "bmc_address"),  # the service root, not a system
        ({"boot_mac": "52:54:00:zz:00:01"}, "boot_mac"),
        ({"gpus": [{"index": 0, "model": "X"}, {"index": 0, "model": "X"}]}, "gpus"),
        ({"facts": {"ram_mib": -1}}, "facts.ram_mib"),
        ({"tags": ["has space"]}, "tags.0"),
        ({"redfish_address": "ipmi://10.0.0.2"}, "redfish_address"),  # the second address is Redfish only
        ({"redfish_address": "https://10.0.0.2/redfish/v1/Systems/1"}, "redfish_address"),
        ({"bmc_address": "redfish://10.0.0.3", "redfish_address": "redfish://10.0.0.3"}, "redfish_address"),
    ]

    def create_payload(self, world: World, tenant: str) -> dict:
        return node_payload()

    def create_in(self, client: TestClient, world: World, tenant: str) -> dict:
        node = super().create_in(client, world, tenant)
        lease_node(world, node["id"], tenant)
        return node


def test_bmc_password_is_encrypted_and_never_returned(client: TestClient, world: World) -> None:
    body = client.post("/api/v1/nodes", json=node_payload(), headers=world.headers("admin")).json()
    assert body["bmc_password_set"] is True and "bmc_password" not in body
    stored = world.session.exec(select(Node).where(Node.id == body["id"])).one()
    assert stored.bmc_password_encrypted and "bmc-secret-password" not in stored.bmc_password_encrypted
    everything = client.get("/api/v1/nodes", headers=world.headers("admin")).text
    assert "bmc-secret-password" not in everything and stored.bmc_password_encrypted not in everything


def test_duplicates_are_409_naming_the_node(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    first = node_payload()
    assert client.post("/api/v1/nodes", json=first, headers=admin).status_code == 201
    same_name = node_payload(name=first["name"])
    assert first["name"] in assert_problem(client.post("/api/v1/nodes", json=same_name, headers=admin), 409)["detail"]
    same_mac = node_payload(boot_mac=first["boot_mac"].upper())
    detail = assert_problem(client.post("/api/v1/nodes", json=same_mac, headers=admin), 409)["detail"]
    assert same_mac["name"] in detail and first["name"] in detail
    assert len(client.get("/api/v1/nodes", headers=admin).json()) == 1


def test_unconfigured_provisioner_is_a_clear_400(client: TestClient, world: World) -> None:
    body = assert_problem(client.post("/api/v1/nodes", json=node_payload("ironic"), headers=world.headers("admin")), 400)
    assert "KILN_IRONIC_URL" in body["detail"]
    assert client.get("/api/v1/nodes", headers=world.headers("admin")).json() == []


def test_bulk_lifecycle_with_a_failing_node(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    for n in range(4):
        tags = ["batch", "fake-fail-deploy"] if n == 2 else ["batch"]
        assert client.post("/api/v1/nodes", json=node_payload(tags=tags), headers=admin).status_code == 201
    for action in ("manage", "inspect", "provide"):
        started = client.post("/api/v1/nodes/actions", json={"action": action, "tag": "batch"}, headers=admin)
        assert started.status_code == 202, started.text
        done = wait_operations(client, admin, bulk_id=started.json()["bulk_id"])
        assert [o["status"] for o in done] == ["succeeded"] * 4
    deploy = {"action": "deploy", "tag": "batch", "image_url": "http://images/ubuntu.qcow2", "image_checksum": "sha256:ab12"}
    bulk = client.post("/api/v1/nodes/actions", json=deploy, headers=admin).json()
    done = wait_operations(client, admin, bulk_id=bulk["bulk_id"])
    outcome = {o["node"]: (o["status"], o["result_state"]) for o in done}
    failing = sorted(outcome)[2]
    assert outcome.pop(failing) == ("failed", "deploy failed")
    assert set(outcome.values()) == {("succeeded", "active")}
    nodes = {n["name"]: n for n in client.get("/api/v1/nodes", headers=admin).json()}
    assert nodes[failing]["last_error"] and nodes[failing]["provision_state"] == "deploy failed"
    events = client.get(f"/api/v1/nodes/{nodes[failing]['id']}/events", headers=admin).json()
    assert events[0]["kind"] == "action" and "deploy failed" in events[0]["message"]


def test_illegal_action_fails_the_operation_with_the_state(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    node = client.post("/api/v1/nodes", json=node_payload(), headers=admin).json()
    deploy = {"action": "deploy", "image_url": "http://i/x.img", "image_checksum": "sha256:00"}
    operation = client.post(f"/api/v1/nodes/{node['id']}/actions", json=deploy, headers=admin).json()
    (done,) = wait_operations(client, admin, node_id=node["id"])
    assert done["id"] == operation["id"] and done["status"] == "failed"
    assert 'state "enroll"' in done["error"] and "available" in done["error"]
    missing_image = client.post(f"/api/v1/nodes/{node['id']}/actions", json={"action": "deploy"}, headers=admin)
    assert assert_problem(missing_image, 422)["errors"][0]["field"] == "image_url"
    assert_problem(client.post("/api/v1/nodes/actions", json={"action": "manage"}, headers=admin), 422)
    assert "ghost" in assert_problem(
        client.post("/api/v1/nodes/actions", json={"action": "manage", "names": ["ghost"]}, headers=admin), 404
    )["detail"]


def test_tenants_cannot_act_and_see_only_their_operations(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    mine = client.post("/api/v1/nodes", json=node_payload(), headers=admin).json()
    theirs = client.post("/api/v1/nodes", json=node_payload(), headers=admin).json()
    lease_node(world, mine["id"], "a")
    lease_node(world, theirs["id"], "b")
    for node in (mine, theirs):
        client.post(f"/api/v1/nodes/{node['id']}/actions", json={"action": "power-on"}, headers=admin)
    wait_operations(client, admin)
    member = world.headers("a_member")
    assert_problem(client.post(f"/api/v1/nodes/{mine['id']}/actions", json={"action": "power-off"}, headers=member), 403)
    assert_problem(client.post(f"/api/v1/nodes/{theirs['id']}/actions", json={"action": "power-off"}, headers=member), 404)
    seen = client.get("/api/v1/operations", headers=member).json()
    assert {o["node"] for o in seen} == {mine["name"]}
    hidden = client.get("/api/v1/operations", params={"node_id": theirs["id"]}, headers=admin).json()[0]
    assert_problem(client.get(f"/api/v1/operations/{hidden['id']}", headers=member), 404)
    assert_problem(client.get(f"/api/v1/nodes/{theirs['id']}/events", headers=member), 404)


def test_leased_node_cannot_be_deleted(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    node = client.post("/api/v1/nodes", json=node_payload(), headers=admin).json()
    lease_node(world, node["id"], "a")
    assert "lease history" in assert_problem(client.delete(f"/api/v1/nodes/{node['id']}", headers=admin), 409)["detail"]
    assert world.session.exec(select(NodeEvent).where(NodeEvent.node_id == node["id"])).first().kind == "enrolled"


def test_tenants_do_not_see_how_their_nodes_are_managed(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    node = client.post("/api/v1/nodes", json=node_payload(), headers=admin).json()
    lease_node(world, node["id"], "a")
    seen = client.get(f"/api/v1/nodes/{node['id']}", headers=world.headers("a_member")).json()
    assert seen["name"] == node["name"] and seen["gpus"] == node["gpus"]
    assert seen["bmc_address"] is None and seen["bmc_username"] is None and seen["external_id"] is None
    assert node["bmc_address"].startswith("ipmi://") and node["external_id"]


def test_list_pages_by_name_with_the_total_and_says_what_is_wrong(client: TestClient, world: World) -> None:
    from pydantic import TypeAdapter

    from fleet.nodes import list_nodes, to_public
    from fleet.schemas import NodePublic
    from kiln.auth import principal_for_user

    admin = world.headers("admin")
    made = [client.post("/api/v1/nodes", json=node_payload(tags=["paged"]), headers=admin).json() for _ in range(5)]
    names = sorted(n["name"] for n in made)
    lease_node(world, made[1]["id"], "a")
    lease_node(world, made[3]["id"], "a")
    everything = client.get("/api/v1/nodes", headers=admin)
    assert "x-total-count" not in everything.headers and [n["name"] for n in everything.json()] == names  # as before
    session = world.session
    for caller in ("admin", "a_member"):  # the same JSON as the node models gave, field for field
        principal = principal_for_user(session, world.callers[caller].user)
        models = TypeAdapter(list[NodePublic]).dump_python(to_public(session, principal, list_nodes(session, principal)),
                                                           mode="json")
        assert client.get("/api/v1/nodes", headers=world.headers(caller)).json() == models
    page = client.get("/api/v1/nodes?tag=paged&limit=2&offset=1", headers=admin)
    assert [n["name"] for n in page.json()] == names[1:3] and page.headers["x-total-count"] == "5"
    assert [n["name"] for n in client.get("/api/v1/nodes?offset=4", headers=admin).json()] == names[4:]
    mine = client.get("/api/v1/nodes?limit=1&offset=1", headers=world.headers("a_member"))
    leased = sorted((made[1]["name"], made[3]["name"]))
    assert [n["name"] for n in mine.json()] == leased[1:] and mine.headers["x-total-count"] == "2"  # their nodes only
    assert mine.json()[0]["bmc_address"] is None
    for query, field in (("limit=0", "limit"), ("limit=10001", "limit"), ("offset=-1", "offset"), ("limit=many", "limit"),
                         ("offset=2147483648", "offset")):
        body = assert_problem(client.get(f"/api/v1/nodes?{query}", headers=admin), 422)
        assert [e["field"] for e in body["errors"]] == [field], body
