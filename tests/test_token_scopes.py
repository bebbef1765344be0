"""Scoped API tokens: a read token is refused (403) on every route that changes something,
found from the OpenAPI document so that a new route cannot be missed; a token limited to one
tenant sees that tenant only; bad scopes and tenants are clear errors that create nothing."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import select

from kiln.auth import Principal
from kiln.models import ApiToken, AuditEvent
from kiln.roles import Role
from kiln.tokens import issue_token
from tests.api_base import assert_problem
from tests.cli_helpers import base_env
from tests.cli_helpers import run as kiln
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World

SAFE = {"get", "head", "options"}
# Write routes that do not take a caller's token at all, and why.
UNAUTHENTICATED_WRITES = {("post", "/api/v1/auth/token"): "password sign-in: it issues tokens, it takes none"}


def read_token(world: World, name: str, tenant: str | None = None) -> dict[str, str]:
    user = world.callers[name].user
    created = issue_token(world.session, Principal.system("test"), user, days=1, scope="read", tenant=tenant)
    world.session.commit()
    return {"Authorization": f"Bearer {created.token}"}


def counts(world: World) -> tuple[int, int]:
    world.session.expire_all()
    return (world.session.exec(select(func.count()).select_from(AuditEvent)).one(),
            world.session.exec(select(func.count()).select_from(ApiToken)).one())


def test_a_read_token_is_refused_on_every_write_route(client: TestClient, world: World) -> None:
    headers = read_token(world, "admin")
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    writes = [(method, path) for path, item in paths.items() for method in item if method not in SAFE]
    assert len(writes) > 20, "the OpenAPI document lists the write routes"
    before = counts(world)
    refused = []
    for method, path in writes:
        if (method, path) in UNAUTHENTICATED_WRITES:
            continue
        url = re.sub(r"\{[^}]+\}", "1", path)
        response = client.request(method.upper(), url, headers=headers, json={})
        problem = assert_problem(response, 403)
        assert "is read-only (scope read)" in problem["detail"], (method, path, problem)
        refused.append((method, path))
    assert counts(world) == before  # nothing written, not even an audit line
    assert len(refused) == len(writes) - len(UNAUTHENTICATED_WRITES)
    assert client.get("/api/v1/users/me", headers=headers).json()["username"] == world.callers["admin"].user.username
    assert client.get("/api/v1/audit-events", headers=headers).status_code == 200  # reading is what it is for


def test_a_token_limited_to_one_tenant_sees_that_tenant_only(client: TestClient, world: World) -> None:
    dual = world.make_caller(Role.TENANT_ADMIN, ["tenant-a", "tenant-b"])
    world.callers["dual"] = dual
    everything = {t["slug"] for t in client.get("/api/v1/tenants", headers=dual.headers).json()}
    assert everything == {"tenant-a", "tenant-b"}
    created = client.post("/api/v1/tokens", headers=dual.headers, json={"name": "b only", "tenant": "tenant-b"})
    assert created.status_code == 201 and created.json()["tenant"] == "tenant-b" and created.json()["scope"] == "write"
    limited = {"Authorization": f"Bearer {created.json()['token']}"}
    assert {t["slug"] for t in client.get("/api/v1/tenants", headers=limited).json()} == {"tenant-b"}
    users = {u["username"] for u in client.get("/api/v1/users", headers=limited).json()}
    assert world.callers["b_member"].user.username in users and world.callers["a_member"].user.username not in users
    listed = client.get("/api/v1/tokens", headers=dual.headers).json()
    assert [(t["name"], t["tenant"], t["scope"], t["last_used_from"]) for t in listed if t["name"] == "b only"] == [
        ("b only", "tenant-b", "write", "testclient")]


def test_bad_scopes_and_tenants_are_clear_and_create_nothing(client: TestClient, world: World, tmp_path: Path) -> None:
    before = counts(world)
    member = world.headers("a_member")
    wrong_scope = assert_problem(client.post("/api/v1/tokens", headers=member, json={"scope": "admin"}), 422)
    assert wrong_scope["errors"][0]["field"] == "scope"
    foreign = assert_problem(client.post("/api/v1/tokens", headers=member, json={"tenant": "tenant-b"}), 422)
    assert foreign["detail"].endswith("is not a member of a tenant 'tenant-b'")
    global_role = assert_problem(client.post("/api/v1/tokens", headers=world.headers("finance"),
                                             json={"tenant": "tenant-a"}), 422)
    assert "global role finance" in global_role["detail"]
    assert counts(world) == before
    env = base_env(tmp_path, KILN_DATABASE_URL=world.session.get_bind().url.render_as_string(hide_password=False),
                   KILN_SECRET_KEY=TEST_SECRET_KEY)
    username = world.callers["a_member"].user.username
    made = kiln(env, "tokens", "create", username, "--scope", "read", "--tenant", "tenant-a")
    assert made.returncode == 0 and made.stdout.startswith("kiln_"), made.stderr
    token = {"Authorization": f"Bearer {made.stdout.strip()}"}
    assert client.get("/api/v1/users/me", headers=token).status_code == 200
    assert_problem(client.post("/api/v1/tokens", headers=token, json={}), 403)  # a read token cannot mint a write one
    bad = kiln(env, "tokens", "create", username, "--tenant", "tenant-b")
    assert bad.returncode != 0 and "is not a member of a tenant 'tenant-b'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
