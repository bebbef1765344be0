"""VDCs and leases through the generic API tests; quotas, overlaps and concurrency."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from fleet.tenancy_models import Lease
from fleet.usage import period_of
from kiln.db import utcnow
from kiln.roles import Role
from tests.api_base import ResourceAPITests, assert_problem
from tests.factories import World
from tests.fleet_helpers import make_node_row, make_vdc

_names = itertools.count(1)


class TestVdcsAPI(ResourceAPITests):
    path = "/api/v1/vdcs"
    update_payload = {"description": "training slice, 2027", "max_nodes": 10}
    invalid_payloads = [
        ({"name": "Not A Name"}, "name"),
        ({"selectors": [{"kind": "colour", "value": "red"}]}, "selectors.0.kind"),
        ({"max_nodes": -1}, "max_nodes"),
        ({"budget": "lots"}, "budget"),
        ({"tenants": [{"tenant": "tenant-a"}, {"tenant": "tenant-a"}]}, "tenants"),
        ({"tenants": [{"tenant": "tenant-a", "max_gpus": "eight"}]}, "tenants.0.max_gpus"),
    ]

    def create_payload(self, world: World, tenant: str) -> dict:
        return {
            "name": f"vdc-{tenant}-{next(_names)}",
            "description": "a slice",
            "selectors": [{"kind": "rack", "value": "r1"}],
            "tenants": [{"tenant": world.tenant(tenant).slug, "max_nodes": 4}],
            "max_gpus": 64,
        }

    def expected_fields(self, payload: dict) -> dict:
        return {k: v for k, v in payload.items() if k != "tenants"}


class TestLeasesAPI(ResourceAPITests):
    path = "/api/v1/leases"
    supports_delete = False
    update_payload = {"ends_at": "2099-01-01T00:00:00Z", "note": "ended"}
    invalid_payloads = [
        ({"node": "Not A Node"}, "node"),
        ({"tenant": "Tenant A"}, "tenant"),
        ({"starts_at": "yesterday"}, "starts_at"),
        ({"starts_at": "2026-01-01T00:00:00"}, "starts_at"),
        ({"ends_at": [1]}, "ends_at"),
    ]

    def create_payload(self, world: World, tenant: str) -> dict:
        node = make_node_row(world)
        make_vdc(world, f"lease-vdc-{next(_names)}", [node.name], {tenant: {}})
        return {"node": node.name, "tenant": world.tenant(tenant).slug, "note": "for training"}


def test_vdc_membership_by_selectors_and_tenant_view(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    h100 = make_node_row(world, rack="r1")
    other = make_node_row(world, rack="r2", gpus=0)
    tagged = make_node_row(world, rack="r3", gpus=0)
    client.patch(f"/api/v1/nodes/{tagged.id}", json={"tags": ["burst"]}, headers=admin)
    body = client.post("/api/v1/vdcs", json={
        "name": "mixed", "nodes": [other.name],
        "selectors": [{"kind": "gpu_model", "value": "NVIDIA H100 80GB HBM3"}, {"kind": "tag", "value": "burst"}],
        "tenants": [{"tenant": "tenant-a"}, {"tenant": "tenant-b", "max_nodes": 1}],
    }, headers=admin).json()
    assert body["member_nodes"] == sorted([h100.name, other.name, tagged.name])
    assert [g["tenant"] for g in body["tenants"]] == ["tenant-a", "tenant-b"]
    seen_by_a = client.get(f"/api/v1/vdcs/{body['id']}", headers=world.headers("a_member")).json()
    assert [g["tenant"] for g in seen_by_a["tenants"]] == ["tenant-a"], "tenant B's grant must stay hidden"


def test_quota_refusals_say_which_and_by_how_much(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    nodes = [make_node_row(world, gpus=8) for _ in range(3)]
    make_vdc(world, "quota-vdc", [n.name for n in nodes], {"a": {"max_nodes": 2, "max_gpus": 12}}, max_nodes=3)
    assert client.post("/api/v1/leases", json={"node": nodes[0].name, "tenant": "tenant-a"}, headers=admin).status_code == 201
    body = assert_problem(client.post("/api/v1/leases", json={"node": nodes[1].name, "tenant": "tenant-a"}, headers=admin), 409)
    assert body["detail"] == (
        "quota exceeded: tenant 'tenant-a' in VDC 'quota-vdc' allows 12 GPU(s); 8 in use and this lease needs 8 (over by 4)"
    )
    leases = world.session.exec(select(Lease)).all()
    assert len(leases) == 1


def test_gpu_hour_quota_counts_the_period(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    first, second = make_node_row(world, gpus=4), make_node_row(world, gpus=4)
    make_vdc(world, "hours-vdc", [first.name, second.name], {"a": {"max_gpu_hours": 10}})
    month_start, _ = period_of(utcnow())
    held = {"starts_at": (month_start + timedelta(hours=1)).isoformat(), "ends_at": (month_start + timedelta(hours=2, minutes=15)).isoformat()}
    created = client.post("/api/v1/leases", json={"node": first.name, "tenant": "tenant-a", **held}, headers=admin)
    assert created.status_code == 201, created.text  # 4 GPUs x 1.25 h = 5 GPU-hours
    later = (month_start + timedelta(hours=10)).isoformat()
    two_hours = {"starts_at": later, "ends_at": (month_start + timedelta(hours=12)).isoformat()}
    body = assert_problem(client.post("/api/v1/leases", json={"node": second.name, "tenant": "tenant-a", **two_hours}, headers=admin), 409)
    assert body["detail"] == (
        "quota exceeded: tenant 'tenant-a' in VDC 'hours-vdc' allows 10 GPU-hours this period; "
        "5.000000 in use and this lease needs 8.000000 (over by 3.000000)"
    )
    one_hour = {"starts_at": later, "ends_at": (month_start + timedelta(hours=11)).isoformat()}
    assert client.post("/api/v1/leases", json={"node": second.name, "tenant": "tenant-a", **one_hour}, headers=admin).status_code == 201
    after = (month_start + timedelta(hours=20)).isoformat()
    one_more = {"starts_at": after, "ends_at": (month_start + timedelta(hours=21)).isoformat()}
    body = assert_problem(client.post("/api/v1/leases", json={"node": first.name, "tenant": "tenant-a", **one_more}, headers=admin), 409)
    assert "9.000000 in use and this lease needs 4.000000 (over by 3.000000)" in body["detail"]


def test_overlaps_are_refused_and_leases_are_not_deletable(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    node = make_node_row(world)
    make_vdc(world, "shared-vdc", [node.name], {"a": {}, "b": {}})
    lease = client.post("/api/v1/leases", json={"node": node.name, "tenant": "tenant-a"}, headers=admin).json()
    body = assert_problem(client.post("/api/v1/leases", json={"node": node.name, "tenant": "tenant-b"}, headers=admin), 409)
    assert f"node '{node.name}' is already leased to tenant 'tenant-a'" in body["detail"]
    later = (utcnow() + timedelta(days=1)).isoformat()
    assert client.patch(f"/api/v1/leases/{lease['id']}", json={"ends_at": later}, headers=admin).status_code == 200
    follow_on = client.post("/api/v1/leases", json={"node": node.name, "tenant": "tenant-b", "starts_at": later}, headers=admin)
    assert follow_on.status_code == 201, follow_on.text
    extend = client.patch(f"/api/v1/leases/{lease['id']}", json={"ends_at": "2099-01-01T00:00:00Z"}, headers=admin)
    assert "leased again" in assert_problem(extend, 409)["detail"]
    assert_problem(client.delete(f"/api/v1/leases/{lease['id']}", headers=admin), 405)


def test_tenant_admin_self_service_within_its_vdc(client: TestClient, world: World) -> None:
    mine, foreign = make_node_row(world), make_node_row(world)
    make_vdc(world, "a-vdc", [mine.name], {"a": {}})
    make_vdc(world, "b-vdc", [foreign.name], {"b": {}})
    a_admin = world.headers("a_admin")
    assert client.post("/api/v1/leases", json={"node": mine.name, "tenant": "tenant-a"}, headers=a_admin).status_code == 201
    assert_problem(client.post("/api/v1/leases", json={"node": foreign.name, "tenant": "tenant-a"}, headers=a_admin), 404)
    assert_problem(client.post("/api/v1/leases", json={"node": mine.name, "tenant": "tenant-b"}, headers=a_admin), 404)
    assert_problem(client.post("/api/v1/leases", json={"node": mine.name, "tenant": "tenant-a"}, headers=world.headers("a_member")), 403)
    nodes = client.get("/api/v1/nodes", headers=world.headers("a_member")).json()
    assert [n["name"] for n in nodes] == [mine.name], "a tenant sees exactly its leased nodes"


def test_concurrent_leases_of_one_node_on_the_database(client: TestClient, world: World, engine) -> None:
    node = make_node_row(world)
    make_vdc(world, "race-vdc", [node.name], {"a": {}, "b": {}})
    callers = [world.make_caller(Role.INFRA_ADMIN) for _ in range(8)]
    barrier = threading.Barrier(len(callers))
    statuses: list[int] = []

    def attempt(index: int) -> None:
        barrier.wait()
        tenant = "tenant-a" if index % 2 else "tenant-b"
        response = client.post("/api/v1/leases", json={"node": node.name, "tenant": tenant}, headers=callers[index].headers)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(callers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses).count(201) == 1, statuses
    assert set(statuses) <= {201, 409, 503}, statuses
    with Session(engine) as session:
        assert len(session.exec(select(Lease).where(Lease.node_id == node.id)).all()) == 1


def test_the_database_itself_refuses_overlapping_leases(world: World, engine) -> None:
    from sqlalchemy.exc import IntegrityError

    node = make_node_row(world)
    start = utcnow()
    with Session(engine) as session:
        session.add(Lease(tenant_id=world.a.id, node_id=node.id, starts_at=start, ends_at=start + timedelta(hours=2), created_by="t"))
        session.commit()
    for starts, ends in ((start + timedelta(hours=1), None), (start - timedelta(hours=1), start + timedelta(minutes=1))):
        with Session(engine) as session, pytest.raises(IntegrityError):
            session.add(Lease(tenant_id=world.b.id, node_id=node.id, starts_at=starts, ends_at=ends, created_by="t"))
            session.commit()
    with Session(engine) as session:  # touching intervals [a, b) and [b, c) do not overlap
        session.add(Lease(tenant_id=world.b.id, node_id=node.id, starts_at=start + timedelta(hours=2), created_by="t"))
        session.commit()
        assert len(session.exec(select(Lease).where(Lease.node_id == node.id)).all()) == 2
