"""Console sessions and API tokens a user can see and end (kiln.sessions): through the API, the
console's account page (forms, CSRF), the CLI, and deactivation ending everything at once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import select

from dashboards.session import CSRF_COOKIE
from kiln.app import create_app
from kiln.auth import Principal
from kiln.models import AuditEvent
from kiln.roles import Role
from kiln.settings import Settings
from kiln.users import UserCreate, create_user
from tests.api_base import assert_problem
from tests.cli_helpers import base_env
from tests.cli_helpers import run as kiln
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World

PASSWORD = "sessions-test-password"


@pytest.fixture
def alice(world: World) -> int:
    user = create_user(world.session, Principal.system("test"), UserCreate(
        username="alice", role=Role.TENANT_MEMBER, tenants=["tenant-a"], password=PASSWORD))
    world.session.commit()
    return user.id


def browser(settings: Settings, engine: Engine, address: str, agent: str) -> TestClient:
    """A console client from `address` with a user agent, over https (Secure cookies)."""
    return TestClient(create_app(settings, engine=engine), base_url="https://testserver", client=(address, 5000),
                      headers={"User-Agent": agent})


def sign_in(client: TestClient) -> None:
    form = client.get("/signin")
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form.text).group(1)
    done = client.post("/signin", data={"username": "alice", "password": PASSWORD, "csrf_token": token, "next": "/usage"},
                       follow_redirects=False)
    assert done.status_code == 303, done.text


def api_token(client: TestClient) -> dict[str, str]:
    token = client.post("/api/v1/auth/token", json={"username": "alice", "password": PASSWORD}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def two_browsers(settings: Settings, engine: Engine, alice: int) -> Iterator[tuple[TestClient, TestClient]]:
    laptop = browser(settings, engine, "192.0.2.10", "Mozilla/5.0 (X11; Linux) Chromium/156")
    phone = browser(settings, engine, "198.51.100.20", "Mozilla/5.0 (iPhone) Safari/605")
    sign_in(laptop)
    sign_in(phone)
    yield laptop, phone


def test_a_user_lists_and_ends_their_sessions_through_the_api(two_browsers, world: World) -> None:
    laptop, phone = two_browsers
    bearer = api_token(laptop)
    listed = laptop.get("/api/v1/sessions", headers=bearer).json()
    assert sorted((s["created_from"], s["user_agent"].split("(")[1].split(")")[0]) for s in listed) == [
        ("192.0.2.10", "X11; Linux"), ("198.51.100.20", "iPhone")]
    phone_sid = next(s["sid"] for s in listed if s["created_from"] == "198.51.100.20")
    assert_problem(laptop.delete(f"/api/v1/sessions/{phone_sid}", headers=world.headers("a_member")), 404)
    ended = laptop.delete(f"/api/v1/sessions/{phone_sid}", headers=bearer)
    assert ended.status_code == 200 and ended.json()["ended_by"] == "alice"
    refused = phone.get("/usage", follow_redirects=False)
    assert refused.status_code == 302 and "reason=signedout" in refused.headers["location"]
    assert laptop.get("/usage", follow_redirects=False).status_code == 200
    assert [s["created_from"] for s in laptop.get("/api/v1/sessions", headers=bearer).json()] == ["192.0.2.10"]
    assert_problem(laptop.delete("/api/v1/sessions/not a sid!", headers=bearer), 422)


def test_the_account_page_forms_end_sessions_and_tokens_with_csrf(two_browsers) -> None:
    laptop, phone = two_browsers
    bearer = api_token(laptop)
    assert laptop.get("/account").status_code == 200  # its content is drawn by Dash: see test_console_browser_account
    csrf = laptop.cookies[CSRF_COOKIE]
    listed = laptop.get("/api/v1/sessions", headers=bearer).json()
    phone_sid = next(s["sid"] for s in listed if s["created_from"] == "198.51.100.20")
    forged = laptop.post(f"/account/sessions/{phone_sid}/end", data={}, follow_redirects=False)
    assert forged.status_code == 403  # no CSRF token: nothing ends
    assert phone.get("/usage", follow_redirects=False).status_code == 200
    done = laptop.post(f"/account/sessions/{phone_sid}/end", data={"csrf_token": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/account?done=ended"
    assert "reason=signedout" in phone.get("/usage", follow_redirects=False).headers["location"]
    token_id = next(t["id"] for t in laptop.get("/api/v1/tokens", headers=bearer).json())
    revoked = laptop.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf}, follow_redirects=False)
    assert revoked.headers["location"] == "/account?done=revoked"
    assert_problem(laptop.get("/api/v1/users/me", headers=bearer), 401)


def test_an_admin_ends_everything_of_a_user_and_deactivation_does_it_at_once(two_browsers, world: World, alice: int,
                                                                            engine: Engine, tmp_path: Path) -> None:
    laptop, phone = two_browsers
    bearer = api_token(laptop)
    assert_problem(laptop.post(f"/api/v1/users/{alice}/end-sessions", headers=world.headers("a_admin")), 403)
    ended = laptop.post(f"/api/v1/users/{alice}/end-sessions", headers=world.headers("admin"))
    assert ended.json() == {"console_sessions": 2, "api_tokens": 1}
    for client in (laptop, phone):
        assert "reason=ended" in client.get("/usage", follow_redirects=False).headers["location"]
    assert "An administrator ended this session." in laptop.get("/signin?reason=ended").text
    assert_problem(laptop.get("/api/v1/users/me", headers=bearer), 401)
    # again, through the CLI, after signing in anew
    sign_in(laptop)
    env = base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False),
                   KILN_SECRET_KEY=TEST_SECRET_KEY)
    out = kiln(env, "users", "end-sessions", "alice")
    assert out.returncode == 0 and out.stdout.strip() == "ended 1 console sessions and revoked 0 API tokens of alice"
    # deactivation ends them too (and they stay ended if the user is activated again)
    sign_in(laptop)
    bearer = api_token(laptop)
    assert laptop.patch(f"/api/v1/users/{alice}", headers=world.headers("admin"), json={"is_active": False}).status_code == 200
    laptop.patch(f"/api/v1/users/{alice}", headers=world.headers("admin"), json={"is_active": True})
    assert "reason=ended" in laptop.get("/usage", follow_redirects=False).headers["location"]
    assert_problem(laptop.get("/api/v1/users/me", headers=bearer), 401)
    world.session.expire_all()
    actions = world.session.exec(select(AuditEvent.action).where(AuditEvent.action == "end-sessions")).all()
    assert len(actions) == 3
