"""Users through the generic API tests, plus role and membership rules."""

from __future__ import annotations

import itertools

from fastapi.testclient import TestClient

from tests.api_base import ResourceAPITests, assert_problem
from tests.factories import World

_names = itertools.count()


class TestUsersAPI(ResourceAPITests):
    path = "/api/v1/users"
    update_payload = {"full_name": "Changed Name", "email": "changed@example.com"}
    invalid_payloads = [
        ({"username": "Has Spaces"}, "username"),
        ({"role": "emperor"}, "role"),
        ({"password": "short"}, "password"),
        ({"email": "not-an-address"}, "email"),
        ({"tenants": "tenant-a"}, "tenants"),
        ({"role": "finance"}, "tenants"),  # global roles take no tenants
        ({"tenants": []}, "tenants"),  # tenant roles need one
    ]

    def create_payload(self, world: World, tenant: str) -> dict:
        return {
            "username": f"user-{tenant}-{next(_names)}",
            "role": "tenant-member",
            "tenants": [world.tenant(tenant).slug],
            "password": "a long enough password",
            "full_name": "Test User",
        }


def test_tenant_admin_manages_own_tenant_users_only(client: TestClient, world: World) -> None:
    a_admin = world.headers("a_admin")
    made = client.post(
        "/api/v1/users", json={"username": "newbie", "role": "tenant-member", "tenants": ["tenant-a"]}, headers=a_admin
    )
    assert made.status_code == 201, made.text
    assert_problem(
        client.post("/api/v1/users", json={"username": "x1", "role": "infra-admin"}, headers=a_admin), 403
    )
    body = assert_problem(
        client.post("/api/v1/users", json={"username": "x2", "role": "tenant-member", "tenants": ["tenant-b"]}, headers=a_admin),
        404,
    )
    assert "tenant-b" in body["detail"]
    listed = {u["username"] for u in client.get("/api/v1/users", headers=a_admin).json()}
    assert "newbie" in listed
    assert world.callers["b_member"].user.username not in listed
    assert world.callers["admin"].user.username not in listed


def test_finance_has_no_access_to_users(client: TestClient, world: World) -> None:
    assert_problem(client.get("/api/v1/users", headers=world.headers("finance")), 403)


def test_me_and_self_service(client: TestClient, world: World) -> None:
    member = world.headers("a_member")
    me = client.get("/api/v1/users/me", headers=member).json()
    assert me["username"] == world.callers["a_member"].user.username and me["tenants"] == ["tenant-a"]
    changed = client.patch(f"/api/v1/users/{me['id']}", json={"full_name": "Me Myself"}, headers=member)
    assert changed.status_code == 200 and changed.json()["full_name"] == "Me Myself"
    assert_problem(client.patch(f"/api/v1/users/{me['id']}", json={"role": "tenant-admin"}, headers=member), 403)


def test_memberships_in_hidden_tenants_are_not_shown(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    both = client.post(
        "/api/v1/users", json={"username": "both", "role": "tenant-member", "tenants": ["tenant-a", "tenant-b"]}, headers=admin
    ).json()
    assert both["tenants"] == ["tenant-a", "tenant-b"]
    seen_by_a = client.get(f"/api/v1/users/{both['id']}", headers=world.headers("a_member")).json()
    assert seen_by_a["tenants"] == ["tenant-a"]
    assert_problem(client.delete(f"/api/v1/users/{both['id']}", headers=world.headers("a_admin")), 403)


def test_last_infra_admin_is_protected(client: TestClient, world: World) -> None:
    admin = world.callers["admin"]
    body = assert_problem(
        client.patch(f"/api/v1/users/{admin.user.id}", json={"is_active": False}, headers=admin.headers), 409
    )
    assert "last active infra-admin" in body["detail"]
    assert_problem(client.delete(f"/api/v1/users/{admin.user.id}", headers=admin.headers), 409)


def test_password_sign_in_issues_a_token(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    client.post(
        "/api/v1/users",
        json={"username": "carol", "role": "tenant-member", "tenants": ["tenant-a"], "password": "correct horse battery"},
        headers=admin,
    )
    assert_problem(client.post("/api/v1/auth/token", json={"username": "carol", "password": "wrong password!"}), 401)
    assert_problem(client.post("/api/v1/auth/token", json={"username": "nobody", "password": "wrong password!"}), 401)
    token = client.post("/api/v1/auth/token", json={"username": "carol", "password": "correct horse battery"}).json()
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token['token']}"}).json()
    assert me["username"] == "carol"
    client.patch(f"/api/v1/users/{me['id']}", json={"is_active": False}, headers=admin)
    assert_problem(client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token['token']}"}), 401)
