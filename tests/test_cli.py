"""The `kiln` command's scripting contract, run as a real subprocess."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.cli_helpers import KILN, base_env, run

@pytest.fixture
def cli_env(engine, tmp_path: Path) -> dict[str, str]:
    """Environment pointing the CLI at the (migrated, emptied) test database."""
    return base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False))


def test_identity_commands_and_token_contract(cli_env: dict[str, str], client: TestClient) -> None:
    assert run(cli_env, "tenants", "create", "acme", "--name", "Acme Corp", "--cost-centre", "CC-7").returncode == 0
    tenants = json.loads(run(cli_env, "tenants", "list", "--output", "json").stdout)
    assert [(t["slug"], t["name"], t["cost_centre"]) for t in tenants] == [("acme", "Acme Corp", "CC-7")]
    created = run(cli_env, "users", "create", "alice", "--role", "tenant-admin", "--tenant", "acme", "--password-stdin",
                  stdin="a sufficiently long password\n")
    assert created.returncode == 0, created.stderr
    users = json.loads(run(cli_env, "users", "list", "--output", "json").stdout)
    assert [(u["username"], u["role"], u["tenants"]) for u in users] == [("alice", "tenant-admin", ["acme"])]
    issued = run(cli_env, "tokens", "create", "alice", "--expires-in", "3")
    assert issued.returncode == 0 and issued.stdout.count("\n") == 1
    token = issued.stdout.strip()
    assert token.startswith("kiln_")
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == "alice"
    login = client.post("/api/v1/auth/token", json={"username": "alice", "password": "a sufficiently long password"})
    assert login.status_code == 201
    listed = json.loads(run(cli_env, "tokens", "list", "--output", "json").stdout)
    cli_token = next(t for t in listed if t["name"] == "cli")
    assert token not in json.dumps(listed)
    assert run(cli_env, "tokens", "revoke", cli_token["prefix"]).returncode == 0
    assert client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_leaked_token_is_revoked_by_its_own_value(cli_env: dict[str, str], client: TestClient) -> None:
    assert run(cli_env, "users", "create", "carol", "--role", "infra-admin", "--password-stdin",
               stdin="a sufficiently long password\n").returncode == 0
    token = run(cli_env, "tokens", "create", "carol").stdout.strip()
    other = run(cli_env, "tokens", "create", "carol").stdout.strip()
    assert client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    revoked = run(cli_env, "tokens", "revoke", token)
    assert revoked.returncode == 0, revoked.stderr
    assert token not in revoked.stdout  # the output names the token by its prefix only
    assert client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    unknown = run(cli_env, "tokens", "revoke", "kiln_" + "x" * 43)
    assert unknown.returncode == 1 and "no single token" in unknown.stderr and "x" * 20 not in unknown.stderr


def test_tables_print_text_with_brackets_as_written(cli_env: dict[str, str], engine) -> None:
    """Backend errors such as "[Errno 111]" and advice such as `kiln[ironic]` are not console markup."""
    from sqlmodel import Session

    from fleet.models import Node
    from fleet.nodes import add_event

    with Session(engine) as session:
        node = Node(name="n-brackets", provisioner="fake", bmc_driver="ipmi", bmc_address="ipmi://10.0.0.9",
                    provision_state="enroll")
        session.add(node)
        session.flush()
        add_event(session, node, "error", "[Errno 111] Connection refused; see pip install 'kiln[ironic]' [bold]x[/bold]")
        session.commit()
    shown = run({**cli_env, "COLUMNS": "300"}, "nodes", "show", "n-brackets")
    assert shown.returncode == 0, shown.stderr
    assert "[Errno 111] Connection refused; see pip install 'kiln[ironic]' [bold]x[/bold]" in shown.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["users", "create", "bob", "--role", "emperor"], "Invalid value for '--role'"),
        (["users", "create", "bob", "--role", "tenant-member"], "tenants: role tenant-member needs at least one tenant"),
        (["users", "create", "bob", "--role", "tenant-member", "--tenant", "nowhere"], "no such tenant: nowhere"),
        (["tenants", "create", "Not Valid"], "slug: String should match pattern"),
        (["tokens", "create", "nobody"], "no such user: nobody"),
        (["tokens", "create"], "Missing argument"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_input_is_one_line_on_stderr(cli_env: dict[str, str], args: list[str], message: str) -> None:
    result = run(cli_env, *args)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("kiln: error: "), result.stderr
    assert message in result.stderr
    assert json.loads(run(cli_env, "users", "list", "--output", "json").stdout) == []


def test_unmigrated_database_is_refused_with_the_fix(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    result = run(env, "tenants", "list")
    assert result.returncode == 1 and "run `kiln migrate`" in result.stderr
    served = run({**env, "KILN_SECRET_KEY": "s" * 40}, "serve", "--port", "1")
    assert served.returncode == 1 and "run `kiln migrate`" in served.stderr
    assert "no secret" not in served.stderr
    assert run(env, "migrate").stdout.startswith("database schema at ")
    assert run(env, "tenants", "list", "-o", "json").stdout.strip() == "[]"


def test_serve_refuses_a_missing_secret_key(tmp_path: Path) -> None:
    result = run(base_env(tmp_path), "serve")
    assert result.returncode == 1 and "KILN_SECRET_KEY is not set" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_dev_answers_on_the_port(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen([KILN, "serve", "--dev", "--port", str(port)], env=base_env(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("kiln serve --dev did not answer within 30 s")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/tenants").status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert (tmp_path / "data" / "secret.key").exists()
