"""Schemathesis against `/api/v1/openapi.json` on a database populated like the demo's: no
request, however odd, gets a server error.

Every operation of the OpenAPI document is generated (path ids beyond 64 bits, unknown
periods, odd bodies …) as the infra-admin, who reaches every code path, on SQLite (the
embedded default, where an out-of-range integer used to raise) and on PostgreSQL. Bounded:
`MAX_EXAMPLES` requests per operation, no shrinking.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from kiln.app import create_app
from kiln.auth import Principal
from kiln.models import User
from kiln.roles import Role
from kiln.settings import Settings
from kiln.tokens import issue_token
from kiln.users import UserCreate, create_user
from metering.periods import period_of
from tests.browser import serving
from tests.conftest import TEST_SECRET_KEY
from tests.demo_helpers import seeded_demo

MAX_EXAMPLES = 10  # fuzzing phase; the coverage phase adds each operation's boundary cases on top
ST = str(Path(sys.executable).parent / "st")  # schemathesis' command, from the `test` extra


@pytest.fixture(scope="module")
def demo_engine(migrated_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The test database holding the demo's fleet, tenants, leases, price cards, budgets and draft bills."""
    now = datetime.now(UTC)
    return seeded_demo(migrated_engine, tmp_path_factory.mktemp("fuzz-data"), now,
                       (period_of(now.replace(day=1) - timedelta(days=1)), period_of(now)), Principal.system("fuzz"))


@pytest.fixture(scope="module")
def api_url(demo_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Kiln app on that database, served on a loopback port."""
    settings = Settings(data_dir=Path(tmp_path_factory.mktemp("fuzz-app")), secret_key=TEST_SECRET_KEY,
                        database_url=demo_engine.url.render_as_string(hide_password=False), log_level="ERROR")
    with serving(create_app(settings, engine=demo_engine)) as url:
        yield url


def admin_token(engine: Engine, username: str) -> str:
    """A fresh infra-admin `username` and an API token of theirs."""
    with Session(engine, expire_on_commit=False) as session:
        create_user(session, Principal.system("fuzz"), UserCreate(username=username, role=Role.INFRA_ADMIN))
        session.flush()
        user = session.exec(select(User).where(User.username == username)).one()
        token = issue_token(session, Principal.system("fuzz"), user, name="fuzz", days=1).token
        session.commit()
    return token


def schemathesis_run(url: str, token: str, tmp_path: Path, *selection: str) -> subprocess.CompletedProcess[str]:
    """`st run` over the served OpenAPI document, checking only for server errors."""
    return subprocess.run(
        [ST, "run", f"{url}/api/v1/openapi.json", "--checks", "not_a_server_error", "--header", f"Authorization: Bearer {token}",
         "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--no-shrink",
         "--workers", "1", "--continue-on-failure", "--generation-database", "none", "--no-color",
         "--report-dir", str(tmp_path), *selection],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )


def test_no_request_gets_a_server_error(api_url: str, demo_engine: Engine, tmp_path: Path) -> None:
    # The fuzzer may delete or demote the very user and token it calls with: those operations go
    # last, under a second admin, so they cannot turn the rest of the run into 401s.
    own_credentials = "^/api/v1/(users|tokens)/"
    first = schemathesis_run(api_url, admin_token(demo_engine, "fuzz-admin"), tmp_path,
                             "--exclude-path-regex", own_credentials)
    assert "Authentication failed" not in first.stdout, first.stdout[-4000:]
    assert first.returncode == 0, first.stdout[-8000:]
    second = schemathesis_run(api_url, admin_token(demo_engine, "fuzz-admin-2"), tmp_path,
                              "--include-path-regex", own_credentials)
    assert second.returncode == 0, second.stdout[-8000:]
    tested = re.search(r"Tested: (\d+)", first.stdout)
    assert tested and int(tested.group(1)) > 50, first.stdout[-2000:]  # the whole API, not an empty document
