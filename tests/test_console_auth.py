"""Console sign-in, sessions and CSRF over HTTP (no browser), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine
from sqlmodel import select

from dashboards.session import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    ConsoleSession,
    SessionCodec,
)
from kiln.app import create_app
from kiln.auth import Principal
from kiln.models import AuditEvent, User
from kiln.roles import Role
from kiln.settings import Settings
from kiln.users import UserCreate, UserUpdate, create_user, update_user
from tests.api_base import assert_problem
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World

PASSWORD = "console-test-password"
CALLBACK = "/_dash-update-component"
FLEET_OUTPUTS = (("fleet-power", "figure"), ("fleet-hottest", "figure"), ("fleet-stats", "children"),
                 ("fleet-updated", "children"))
POWER_CALLBACK = {  # the fleet page's live parts (power chart, hottest nodes, stats), as the browser asks for them
    "output": "..{}..".format("...".join(f"{i}.{p}" for i, p in FLEET_OUTPUTS)),
    "outputs": [{"id": i, "property": p} for i, p in FLEET_OUTPUTS],
    "inputs": [{"id": "fleet-range", "property": "value", "value": "24h"},
               {"id": "fleet-from", "property": "value", "value": None},
               {"id": "fleet-to", "property": "value", "value": None},
               {"id": "fleet-tick", "property": "n_intervals", "value": None}],
    "changedPropIds": ["fleet-range.value"], "state": [],
}


@pytest.fixture
def users(world: World) -> dict[str, User]:
    """An infra admin and a member of tenant A, with passwords."""
    system = Principal.system("test")
    made = {
        "admin": create_user(world.session, system, UserCreate(username="ops", role=Role.INFRA_ADMIN, password=PASSWORD)),
        "alice": create_user(world.session, system, UserCreate(username="alice", role=Role.TENANT_MEMBER,
                                                               tenants=["tenant-a"], password=PASSWORD)),
    }
    world.session.commit()
    return made


@pytest.fixture
def https_client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """A client over https (production cookies are Secure and only travel over https)."""
    with TestClient(create_app(settings, engine=engine), base_url="https://testserver") as client:
        yield client


def sign_in(client: TestClient, username: str, password: str = PASSWORD, next_path: str = "/usage") -> Response:
    """Fetch the sign-in form and post it with its CSRF token."""
    form = client.get("/signin")
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form.text).group(1)
    data = {"username": username, "password": password, "csrf_token": token, "next": next_path}
    return client.post("/signin", data=data, follow_redirects=False)


def test_api_paths_stay_the_apis_with_the_console_mounted(https_client: TestClient) -> None:
    assert "no such endpoint" in assert_problem(https_client.get("/api/v1/nope"), 404)["detail"]
    assert_problem(https_client.delete("/api/v1/tenants"), 405)
    assert https_client.get("/healthz").status_code == 200
    assert_problem(https_client.get("/api/v1/nodes"), 401)  # the console's cookie never authenticates the API


def test_pages_need_a_session(https_client: TestClient) -> None:
    page = https_client.get("/fleet?x=1", follow_redirects=False)
    assert page.status_code == 302 and page.headers["location"] == "/signin?reason=required&next=%2Ffleet%3Fx%3D1"
    layout = https_client.get("/_dash-layout")
    assert layout.status_code == 401 and layout.json()["reason"] == "required"
    assert https_client.post(CALLBACK, json=POWER_CALLBACK).status_code == 401
    asset = https_client.get("/assets/console.js")
    assert asset.status_code == 200  # static files are public
    # Dash links assets with ?m=<mtime>: browsers may keep them for a year (a changed file is a new URL).
    assert asset.headers["cache-control"] == "public, max-age=31536000"
    assert https_client.get("/usage", follow_redirects=False).headers["cache-control"] == "no-store"


def test_sign_in_sets_hardened_cookies_and_records_it(https_client: TestClient, users: dict, world: World) -> None:
    response = sign_in(https_client, "ops", next_path="/vdcs")
    assert response.status_code == 303 and response.headers["location"] == "/vdcs"
    cookies = {c.split("=", 1)[0]: c.lower() for c in response.headers.get_list("set-cookie")}
    assert {"httponly", "secure", "samesite=lax", "path=/"} <= {part.strip() for part in cookies[SESSION_COOKIE].split(";")}
    assert "httponly" not in cookies[CSRF_COOKIE] and "samesite=strict" in cookies[CSRF_COOKIE] and "secure" in cookies[CSRF_COOKIE]
    assert https_client.get("/vdcs").status_code == 200
    assert https_client.get("/", follow_redirects=False).headers["location"] == "/fleet"
    events = world.session.exec(select(AuditEvent).where(AuditEvent.action == "sign-in")).all()
    assert [(e.actor, e.object_id) for e in events] == [("ops", str(users["admin"].id))]


def test_dev_mode_over_plain_http_drops_secure_only(settings: Settings, engine: Engine, users: dict) -> None:
    dev = settings.model_copy(update={"dev": True})
    with TestClient(create_app(dev, engine=engine)) as client:
        cookie = next(c for c in sign_in(client, "ops").headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert "secure" not in cookie.lower() and "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()


def test_bad_sign_ins_say_why_and_set_no_session(https_client: TestClient, users: dict) -> None:
    wrong = sign_in(https_client, "ops", "not-the-password")
    assert wrong.status_code == 401 and "Wrong username or password." in wrong.text
    unknown = sign_in(https_client, "nobody", "not-the-password")
    assert unknown.status_code == 401 and "Wrong username or password." in unknown.text
    empty = sign_in(https_client, "", "")
    assert empty.status_code == 422
    assert 'id="username-error">Enter your username.' in empty.text and 'id="password-error">Enter your password.' in empty.text
    forged = https_client.post("/signin", data={"username": "ops", "password": PASSWORD, "csrf_token": "0" * 64})
    assert forged.status_code == 403 and "did not come from this site" in forged.text
    for response in (wrong, unknown, empty, forged):
        assert not any(c.startswith(SESSION_COOKIE + "=") and "max-age=0" not in c.lower()
                       for c in response.headers.get_list("set-cookie"))
    assert SESSION_COOKIE not in https_client.cookies


def test_next_never_leaves_the_site(https_client: TestClient, users: dict) -> None:
    assert sign_in(https_client, "ops", next_path="//evil.example/x").headers["location"] == "/"


def test_callbacks_need_the_csrf_header_and_same_origin(https_client: TestClient, users: dict) -> None:
    sign_in(https_client, "ops")
    token = https_client.cookies[CSRF_COOKIE]
    refused = https_client.post(CALLBACK, json=POWER_CALLBACK)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert https_client.post(CALLBACK, json=POWER_CALLBACK, headers={CSRF_HEADER: "f" * 64}).status_code == 403
    cross = https_client.post(CALLBACK, json=POWER_CALLBACK, headers={CSRF_HEADER: token, "Origin": "https://evil.example"})
    assert cross.status_code == 403 and "cross-origin" in cross.json()["detail"]
    ok = https_client.post(CALLBACK, json=POWER_CALLBACK, headers={CSRF_HEADER: token, "Origin": "https://testserver"})
    assert ok.status_code == 200, ok.text
    figure = ok.json()["response"]["fleet-power"]["figure"]  # no readings yet: the chart says why
    assert figure["data"] == [] and "No DCMI power readings" in figure["layout"]["annotations"][0]["text"]


def test_sign_out_needs_the_token_and_ends_the_session(https_client: TestClient, users: dict) -> None:
    sign_in(https_client, "ops")
    assert https_client.post("/signout", follow_redirects=False).status_code == 403
    assert https_client.get("/vdcs", follow_redirects=False).status_code == 200  # still signed in
    token = https_client.cookies[CSRF_COOKIE]
    out = https_client.post("/signout", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/signin?reason=signedout"
    assert SESSION_COOKIE not in https_client.cookies
    assert https_client.get("/vdcs", follow_redirects=False).status_code == 302


def test_a_copied_cookie_stops_working_at_sign_out(https_client: TestClient, users: dict) -> None:
    sign_in(https_client, "ops")
    copied = https_client.cookies[SESSION_COOKIE]
    https_client.post("/signout", data={"csrf_token": https_client.cookies[CSRF_COOKIE]}, follow_redirects=False)
    https_client.cookies.set(SESSION_COOKIE, copied)  # e.g. taken from the browser before signing out
    refused = https_client.get("/vdcs", follow_redirects=False)
    assert refused.status_code == 302 and "reason=signedout" in refused.headers["location"]
    assert https_client.get("/_dash-layout").json()["reason"] == "signedout"
    https_client.cookies.clear()
    sign_in(https_client, "ops")  # a new sign-in is a new session: not affected
    assert https_client.get("/vdcs", follow_redirects=False).status_code == 200


def test_expired_altered_and_revoked_sessions_go_back_to_sign_in(https_client: TestClient, users: dict, world: World) -> None:
    codec = SessionCodec(TEST_SECRET_KEY, 3600)
    admin = users["admin"]
    stale = ConsoleSession(kind="local", username="ops", user_id=admin.id, expires_at=time.time() - 1)
    https_client.cookies.set(SESSION_COOKIE, codec.seal(stale))
    page = https_client.get("/fleet", follow_redirects=False)
    assert page.status_code == 302 and "reason=expired" in page.headers["location"]
    assert https_client.get("/_dash-layout").json()["reason"] == "expired"
    other_key = SessionCodec("another-secret-key-" + "y" * 32, 3600).seal(codec.new_session("local", "ops", user_id=admin.id))
    https_client.cookies.set(SESSION_COOKIE, other_key)
    assert "reason=expired" in https_client.get("/fleet", follow_redirects=False).headers["location"]
    https_client.cookies.clear()
    sign_in(https_client, "alice")
    assert https_client.get("/usage", follow_redirects=False).status_code == 200
    update_user(world.session, Principal.system("test"), users["alice"].id, UserUpdate(is_active=False))
    world.session.commit()
    assert "reason=revoked" in https_client.get("/usage", follow_redirects=False).headers["location"]


def test_a_tenant_on_an_admin_page_gets_http_403(https_client: TestClient, users: dict) -> None:
    sign_in(https_client, "alice")
    assert https_client.get("/", follow_redirects=False).headers["location"] == "/usage"
    assert https_client.get("/fleet").status_code == 403
    assert https_client.get("/vdcs").status_code == 403
    assert https_client.get("/usage").status_code == 200
    token = https_client.cookies[CSRF_COOKIE]
    answer = https_client.post(CALLBACK, json=POWER_CALLBACK, headers={CSRF_HEADER: token})
    assert answer.status_code == 200  # the chart callback answers, with nothing of the fleet in it
    parts = answer.json()["response"]
    assert parts["fleet-power"]["figure"]["data"] == [] and parts["fleet-hottest"]["figure"]["data"] == []
    assert parts["fleet-stats"]["children"] == []


def render_page(client: TestClient, path: str) -> str:
    """The page layout Dash Pages renders for `path` (its routing callback), as JSON text."""
    body = {
        "output": ".._pages_content.children..._pages_store.data..",
        "outputs": [{"id": "_pages_content", "property": "children"}, {"id": "_pages_store", "property": "data"}],
        "inputs": [{"id": "_pages_location", "property": "pathname", "value": path},
                   {"id": "_pages_location", "property": "search", "value": ""}],
        "changedPropIds": ["_pages_location.pathname"], "state": [],
    }
    response = client.post(CALLBACK, json=body, headers={CSRF_HEADER: client.cookies[CSRF_COOKIE]})
    assert response.status_code == 200, response.text
    return response.text


def test_an_empty_fleet_says_why_each_block_is_empty(https_client: TestClient, users: dict) -> None:
    sign_in(https_client, "ops")
    fleet = render_page(https_client, "/fleet")
    assert "No nodes are enrolled yet" in fleet and "Every polled BMC answered its last poll." in fleet
    assert "No GPU has reported an XID error." in fleet
    assert "No VDCs yet" in render_page(https_client, "/vdcs")
    assert "Node not found" in render_page(https_client, "/nodes/nope")
    assert "Page not found" in render_page(https_client, "/no-such-page")


def test_a_tenant_gets_the_403_panel_from_the_server(https_client: TestClient, users: dict) -> None:
    sign_in(https_client, "alice")
    for path in ("/fleet", "/vdcs"):
        page = render_page(https_client, path)
        assert "403 \\u2014 Forbidden" in page or "403 — Forbidden" in page
        assert "node-grid" not in page and "vdc-table" not in page
