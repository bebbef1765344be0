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
