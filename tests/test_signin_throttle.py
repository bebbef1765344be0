"""Password sign-in throttling (kiln.throttle): growing delays, per-address lock before the
user lock, answers that do not reveal whether a user exists, audit, `kiln users unlock`, the
console form, and one count shared by two `kiln serve` processes on one PostgreSQL."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from kiln import throttle
from kiln.app import create_app
from kiln.models import AuditEvent, SigninFailure
from kiln.settings import Settings
from tests.api_base import assert_problem
from tests.browser import free_port
from tests.cli_helpers import KILN, base_env
from tests.cli_helpers import run as kiln
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World

PASSWORD = "correct horse battery"


class Clock:
    """The throttle's clock, moved by the test instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(throttle, "utcnow", clock)
    return clock


def client_from(settings: Settings, engine: Engine, address: str) -> TestClient:
    """A client calling from `address`, over https (the console's cookies are Secure)."""
    return TestClient(create_app(settings, engine=engine), raise_server_exceptions=False, client=(address, 40000),
                      base_url="https://testserver")


def add_carol(client: TestClient, world: World) -> None:
    created = client.post("/api/v1/users", headers=world.headers("admin"), json={
        "username": "carol", "role": "tenant-member", "tenants": ["tenant-a"], "password": PASSWORD})
    assert created.status_code == 201, created.text


def login(client: TestClient, password: str, username: str = "carol") -> httpx.Response:
    return client.post("/api/v1/auth/token", json={"username": username, "password": password})


def test_delays_grow_then_the_address_locks_before_the_user(settings: Settings, engine: Engine, world: World,
                                                            clock: Clock) -> None:
    settings = settings.model_copy(update={"signin_max_failures": 5, "signin_lock_minutes": 15})
    attacker = client_from(settings, engine, "203.0.113.9")
    add_carol(attacker, world)
    for _ in range(2):  # typos cost nothing
        assert_problem(login(attacker, "wrong password 1"), 401)
    assert_problem(login(attacker, "wrong password 1"), 401)  # the third failure: wait 1 s
    early = login(attacker, PASSWORD)
    problem = assert_problem(early, 429)  # refused before the password is looked at, even the right one
    assert early.headers["Retry-After"] == "1" and problem["retry_after"] == 1
    assert problem["detail"] == "too many failed sign-ins: try again in 1 seconds"
    clock.advance(1)
    assert_problem(login(attacker, "wrong password 2"), 401)  # failure 4: the address's limit (5 - 1)
    locked = login(attacker, PASSWORD)
    assert_problem(locked, 429) and locked.headers["Retry-After"] == str(15 * 60)
    with Session(engine) as session:
        rows = {(r.kind, r.key): r for r in session.exec(select(SigninFailure))}
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "lock")).all()
    assert rows[("address", "203.0.113.9")].locked_until == clock.now + timedelta(minutes=15)
    assert rows[("user", "carol")].failures == 4 and rows[("user", "carol")].locked_until is None
    assert [(e.object_type, e.object_id, e.detail["kind"], e.source) for e in events] == [
        ("signin", "203.0.113.9", "address", "203.0.113.9")]
    # the real user, elsewhere, is not locked out by the attacker (after the last 2 s delay)
    clock.advance(2)
    assert login(client_from(settings, engine, "198.51.100.7"), PASSWORD).status_code == 201
    with Session(engine) as session:
        assert session.exec(select(SigninFailure).where(SigninFailure.kind == "user")).all() == []
    # when the address lock ends, the user's count has restarted: one address never locks the user
    clock.advance(15 * 60)
    for _ in range(4):
        clock.advance(10)
        assert_problem(login(attacker, "wrong password 3"), 401)
    with Session(engine) as session:
        assert session.exec(select(SigninFailure).where(SigninFailure.kind == "user")).one().locked_until is None


def test_many_addresses_lock_the_user_and_unknown_users_look_the_same(settings: Settings, engine: Engine,
                                                                      world: World, clock: Clock, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"signin_max_failures": 3})
    add_carol(client_from(settings, engine, "10.0.0.1"), world)
    answers = {}
    for name in ("carol", "nobody"):
        for n in range(3):
            clock.advance(120)
            response = login(client_from(settings, engine, f"10.0.{n}.{len(name)}"), "wrong password!", name)
            assert_problem(response, 401)
        clock.advance(120)
        answers[name] = login(client_from(settings, engine, "10.9.9.9"), "wrong password!", name)
    assert answers["carol"].status_code == answers["nobody"].status_code == 429
    assert answers["carol"].json()["detail"] == answers["nobody"].json()["detail"]
    clock.advance(60)
    assert_problem(login(client_from(settings, engine, "10.9.9.10"), PASSWORD), 429)  # locked: even the right one
    env = base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False),
                   KILN_SECRET_KEY=TEST_SECRET_KEY)
    unlocked = kiln(env, "users", "unlock", "carol")
    assert unlocked.returncode == 0 and unlocked.stdout.strip() == "unlocked carol", unlocked.stderr
    assert kiln(env, "users", "unlock", "carol").stdout.strip() == "carol had no failed sign-ins to forget"
    assert login(client_from(settings, engine, "10.9.9.10"), PASSWORD).status_code == 201
    with Session(engine) as session:
        assert session.exec(select(AuditEvent.actor).where(AuditEvent.action == "unlock")).one().startswith("cli:")


def test_the_console_form_is_throttled_with_the_same_counts(settings: Settings, engine: Engine, world: World,
                                                            clock: Clock) -> None:
    settings = settings.model_copy(update={"signin_max_failures": 3})
    console = client_from(settings, engine, "192.0.2.5")
    add_carol(console, world)
    assert_problem(login(console, "wrong password!"), 401)  # one through the API ...

    def submit(password: str) -> httpx.Response:
        form = console.get("/signin")
        token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        return console.post("/signin", data={"csrf_token": token, "username": "carol", "password": password, "next": "/"},
                            follow_redirects=False)

    assert submit("wrong password!").status_code == 401  # ... one through the form: the address's limit is 2
    refused = submit(PASSWORD)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == str(15 * 60)
    assert "Too many failed sign-ins. Try again in 15 minutes." in refused.text
    clock.advance(15 * 60 + 1)
    assert submit(PASSWORD).status_code == 303


@pytest.fixture
def two_servers(engine: Engine, world: World, tmp_path: Path) -> Iterator[list[str]]:
    """Two `kiln serve` processes on the test database (PostgreSQL: the replicas' setup)."""
    env = base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False),
                   KILN_SECRET_KEY=TEST_SECRET_KEY, KILN_SIGNIN_MAX_FAILURES="4")
    ports = [free_port(), free_port()]
    processes = [subprocess.Popen([KILN, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        deadline = time.monotonic() + 60
        for url in urls:
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"kiln serve at {url} did not become ready"
                time.sleep(0.2)
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)


@pytest.mark.postgresql_only
def test_two_replicas_share_the_count(two_servers: list[str], world: World) -> None:
    first, second = two_servers
    created = httpx.post(f"{first}/api/v1/users", headers=world.headers("admin"), json={
        "username": "carol", "role": "tenant-member", "tenants": ["tenant-a"], "password": PASSWORD})
    assert created.status_code == 201, created.text
    statuses = []
    for n in range(3):  # 1, 2: free; 3 (the address's limit with 4 per user) locks the address
        url = (first, second)[n % 2]
        statuses.append(httpx.post(f"{url}/api/v1/auth/token", json={"username": "carol", "password": "nope nope nope"}).status_code)
    assert statuses == [401, 401, 401]
    for url in (first, second):  # both replicas refuse the locked address, whichever counted what
        refused = httpx.post(f"{url}/api/v1/auth/token", json={"username": "carol", "password": PASSWORD})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 60
