"""Tenants through the generic API tests, plus their own rules."""

from __future__ import annotations

import itertools

from fastapi.testclient import TestClient

from tests.api_base import ResourceAPITests, assert_problem
from tests.factories import World

_slugs = itertools.count()


class TestTenantsAPI(ResourceAPITests):
    path = "/api/v1/tenants"
    update_payload = {"name": "Renamed", "cost_centre": "CC-42"}
    invalid_payloads = [
        ({"slug": "Not A Slug"}, "slug"),
        ({"slug": "-leading-hyphen"}, "slug"),
        ({"slug": "x" * 64}, "slug"),
        ({"name": ""}, "name"),
        ({"cost_centre": 42}, "cost_centre"),
    ]

    def create_payload(self, world: World, tenant: str) -> dict:
        return {"slug": f"new-{tenant}-{next(_slugs)}", "name": "New tenant", "cost_centre": "CC-1"}

    def own_object(self, client: TestClient, world: World) -> dict:
        return client.get(f"{self.path}/{world.a.id}", headers=world.headers("admin")).json()

    def foreign_object(self, client: TestClient, world: World) -> dict:
        return client.get(f"{self.path}/{world.b.id}", headers=world.headers("admin")).json()

    def test_reader_sees_exactly_its_own_tenant(self, client: TestClient, world: World) -> None:
        listed = client.get(self.path, headers=world.headers("a_member")).json()
        assert [t["slug"] for t in listed] == ["tenant-a"]

    def test_read_your_own_tenant_by_id(self, client: TestClient, world: World) -> None:
        body = client.get(f"{self.path}/{world.a.id}", headers=world.headers("a_member")).json()
        assert body["slug"] == "tenant-a"


def test_finance_reads_all_tenants_but_cannot_create(client: TestClient, world: World) -> None:
    finance = world.headers("finance")
    assert {t["slug"] for t in client.get("/api/v1/tenants", headers=finance).json()} == {"tenant-a", "tenant-b"}
    assert_problem(client.post("/api/v1/tenants", json={"slug": "nope"}, headers=finance), 403)


def test_duplicate_slug_is_409(client: TestClient, world: World) -> None:
    body = assert_problem(client.post("/api/v1/tenants", json={"slug": "tenant-a"}, headers=world.headers("admin")), 409)
    assert "tenant-a" in body["detail"]


def test_tenant_with_members_cannot_be_deleted(client: TestClient, world: World) -> None:
    body = assert_problem(client.delete(f"/api/v1/tenants/{world.a.id}", headers=world.headers("admin")), 409)
    assert "member" in body["detail"]
    assert client.get(f"/api/v1/tenants/{world.a.id}", headers=world.headers("admin")).status_code == 200


def test_name_defaults_to_slug_and_changes_are_audited(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    created = client.post("/api/v1/tenants", json={"slug": "plain"}, headers=admin).json()
    assert created["name"] == "plain"
    client.patch(f"/api/v1/tenants/{created['id']}", json={"name": "Plain Ltd"}, headers=admin)
    events = client.get("/api/v1/audit-events?object_type=tenant", headers=admin).json()
    mine = [(e["action"], e["actor"]) for e in events if e["object_id"] == str(created["id"])]
    admin_name = world.callers["admin"].user.username
    assert mine == [("update", admin_name), ("create", admin_name)]
    assert events[0]["source"] == "testclient"
