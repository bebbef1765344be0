"""HTTP edge behaviour: problem details for bad input, body limits, transactions, health, metrics."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from kiln import audit
from kiln.models import User
from tests.api_base import assert_problem
from tests.factories import World


def test_malformed_json_and_wrong_types(client: TestClient, world: World) -> None:
    admin = {**world.headers("admin"), "Content-Type": "application/json"}
    body = assert_problem(client.post("/api/v1/tenants", content=b'{"slug": ', headers=admin), 400)
    assert "not valid JSON" in body["detail"]
    body = assert_problem(client.post("/api/v1/tenants", json=["a", "list"], headers=admin), 422)
    assert body["errors"]
    body = assert_problem(client.get("/api/v1/tenants/not-a-number", headers=admin), 422)
    assert body["errors"][0]["field"] == "tenant_id"


def test_oversized_bodies_are_413_declared_or_streamed(client: TestClient, world: World) -> None:
    admin = {**world.headers("admin"), "Content-Type": "application/json"}
    big = b'{"slug": "big", "description": "' + b"x" * (1024 * 1024) + b'"}'
    body = assert_problem(client.post("/api/v1/tenants", content=big, headers=admin), 413)
    assert "KILN_MAX_BODY_BYTES" in body["detail"]

    def chunks():
        for index in range(0, len(big), 65536):
            yield big[index : index + 65536]

    assert_problem(client.post("/api/v1/tenants", content=chunks(), headers=admin), 413)
    small = b'{"slug": "streamed"}'
    assert client.post("/api/v1/tenants", content=iter([small[:5], small[5:]]), headers=admin).status_code == 201
    assert "big" not in {t["slug"] for t in client.get("/api/v1/tenants", headers=admin).json()}


def test_ids_beyond_what_a_row_can_hold_are_422_naming_the_parameter(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    for path, field in (("/api/v1/bills/99999999999999999999", "bill_id"),
                        ("/api/v1/bills/1/lines/2147483648/usage", "line_id"),
                        ("/api/v1/operations?node_id=2147483648", "node_id"),
                        ("/api/v1/nodes/0", "node_id")):
        body = assert_problem(client.get(path, headers=admin), 422)
        assert [e["field"] for e in body["errors"]] == [field], path
    for path in ("/api/v1/budgets/99999999999999999999", "/api/v1/leases/2147483648"):
        assert_problem(client.patch(path, json={}, headers=admin), 422)
    assert_problem(client.get("/api/v1/bills/2147483647", headers=admin), 404)  # in range: simply not there
    quota = assert_problem(client.post("/api/v1/vdcs", json={"name": "big", "max_nodes": 2**40}, headers=admin), 422)
    assert [e["field"] for e in quota["errors"]] == ["max_nodes"]  # a count the database could not store


def test_every_id_parameter_is_bounded_in_the_openapi_document(client: TestClient) -> None:
    """Integer path and query ids all go through `RowId`: a new route cannot forget the bound."""
    spec = client.get("/api/v1/openapi.json").json()
    unbounded = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for parameter in operation.get("parameters", []):
                if not parameter["name"].endswith("_id") or parameter["in"] not in ("path", "query"):
                    continue
                schema = parameter["schema"]
                options = schema.get("anyOf", [schema])
                if not any(o.get("type") == "integer" for o in options):
                    continue  # a string id (a bulk operation's UUID)
                if not any(o.get("type") == "integer" and o.get("maximum") == 2**31 - 1 and o.get("minimum") == 1
                           for o in options):
                    unbounded.append(f"{method.upper()} {path} {parameter['name']}")
    assert unbounded == []


def test_nul_characters_are_refused_wherever_they_arrive(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    for response in (
        client.get("/api/v1/tenants?slug=a%00b", headers=admin),
        client.get("/api/v1/vdcs/by-name/a%00b", headers=admin),
        client.post("/api/v1/tenants", content=b'{"slug": "nul", "name": "a\\u0000b"}',
                    headers={**admin, "Content-Type": "application/json"}),
    ):
        assert "NUL character" in assert_problem(response, 422)["detail"]
    escaped = client.post("/api/v1/tenants", content=b'{"slug": "backslash", "name": "a\\\\u0000b"}',
                          headers={**admin, "Content-Type": "application/json"})
    assert escaped.status_code == 201 and escaped.json()["name"] == "a\\u0000b"  # the six characters, not NUL
    assert "nul" not in {t["slug"] for t in client.get("/api/v1/tenants", headers=admin).json()}


def test_failed_request_writes_nothing(client: TestClient, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args, **kwargs):
        raise RuntimeError("audit store broke")

    monkeypatch.setattr(audit, "record", explode)
    payload = {"username": "ghost", "role": "tenant-member", "tenants": ["tenant-a"]}
    body = assert_problem(client.post("/api/v1/users", json=payload, headers=world.headers("admin")), 500)
    assert "audit store" not in body["detail"], "internal errors must not leak details"
    assert world.session.exec(select(User).where(User.username == "ghost")).first() is None


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    assert "no such endpoint" in assert_problem(client.get("/api/v1/nope"), 404)["detail"]
    assert_problem(client.put("/healthz"), 405)


def test_health_readiness_and_metrics(client: TestClient, world: World) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["schema"]
    client.get("/api/v1/tenants", headers=world.headers("admin"))
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'kiln_http_requests_total{method="GET",route="/api/v1/tenants",status="200"} 1.0' in text
    assert "kiln_http_request_duration_seconds_bucket" in text and 'kiln_build_info{version="' in text


def test_readiness_fails_on_an_unmigrated_database(settings, tmp_path) -> None:
    from kiln.app import create_app

    empty = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'empty.db'}"})
    with TestClient(create_app(empty)) as client:
        body = assert_problem(client.get("/readyz"), 503)
    assert "kiln migrate" in body["detail"]


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/api/v1/openapi.json").json()
    assert {"/api/v1/tenants", "/api/v1/users", "/api/v1/tokens", "/api/v1/audit-events"} <= set(spec["paths"])


def test_tokens_list_create_revoke(client: TestClient, world: World, engine) -> None:
    member = world.callers["a_member"]
    created = client.post("/api/v1/tokens", json={"name": "ci", "expires_in_days": 7}, headers=member.headers)
    assert created.status_code == 201
    new = created.json()
    assert new["token"].startswith("kiln_") and new["name"] == "ci"
    mine = client.get("/api/v1/tokens", headers=member.headers).json()
    assert {t["id"] for t in mine} >= {new["id"]} and all("token" not in t for t in mine)
    assert all(t["username"] == member.user.username for t in mine)
    others = client.get("/api/v1/tokens", headers=world.headers("b_member")).json()
    assert new["id"] not in {t["id"] for t in others}
    assert_problem(client.delete(f"/api/v1/tokens/{new['id']}", headers=world.headers("b_member")), 404)
    assert client.delete(f"/api/v1/tokens/{new['id']}", headers=member.headers).json()["revoked_at"]
    body = assert_problem(client.get("/api/v1/tenants", headers={"Authorization": f"Bearer {new['token']}"}), 401)
    assert "revoked" in body["detail"]
    everyone = client.get("/api/v1/tokens", headers=world.headers("admin")).json()
    assert len({t["username"] for t in everyone}) >= 6
    with Session(engine) as session:
        stored = [u for u in session.exec(select(User)).all()]
    assert stored and all(new["token"] not in str(u) for u in stored)
    assert_problem(client.post("/api/v1/tokens", json={"expires_in_days": 0}, headers=member.headers), 422)
