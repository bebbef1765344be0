"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, an app, and callers by role."""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from kiln.app import create_app
from kiln.db import create_db_engine
from kiln.schema import target_metadata, upgrade
from kiln.settings import Settings
from tests.browser import tabs_opened_inside_closed
from tests.factories import World
from tests.peers.harness import peers_required, running_peer
from tests.schedule import longest_first

TEST_SECRET_KEY = "test-secret-key-" + "x" * 32


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) the SQLite variant of tests marked `postgresql_only`; hand the longest
    modules to the workers first (`tests.schedule`)."""
    longest_first(items)
    dropped = [item for item in items if item.get_closest_marker("postgresql_only") and "[sqlite" in item.name]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


def _forbid_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """With KILN_REQUIRE_PEERS=1 (CI) a skip, whatever made it, becomes a failure."""
    if report.skipped and peers_required() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under KILN_REQUIRE_PEERS=1, which forbids skips: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """A skipped test fails when peers are required."""
    report = yield
    _forbid_skip(report)
    return report


@pytest.fixture(autouse=True)
def _browser_tabs_closed_after_each_test() -> Iterator[None]:
    """The browser tabs a test opened on a module's console are closed when it ends."""
    with tabs_opened_inside_closed():
        yield


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[pytest.CollectReport]:
    """So does a module skipped at import (`pytest.skip(allow_module_level=True)`)."""
    report = yield
    _forbid_skip(report)
    return report


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the real PostgreSQL server's maintenance database (started if it was stopped)."""
    with running_peer("postgres", tmp_path_factory.mktemp("postgres")) as url:
        yield url


@contextmanager
def new_postgres_database(postgres_server: str) -> Iterator[str]:
    """A new, empty database on the real PostgreSQL server (its SQLAlchemy URL), dropped afterwards."""
    name = f"kiln_test_{secrets.token_hex(4)}"
    admin_url = make_url(postgres_server)
    dsn = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> Iterator[str]:
    """A fresh database for this test session, dropped afterwards."""
    with new_postgres_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every DB-touching test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'kiln.db'}"
    return request.getfixturevalue("postgres_database")


@pytest.fixture(scope="session")
def migrated_engine(database_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head, shared by the session."""
    engine = create_db_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def empty_database(engine: Engine) -> Engine:
    """Delete every row of every Kiln table; returns the engine."""
    with engine.begin() as connection:
        for table in reversed(target_metadata().sorted_tables):
            connection.execute(text(f'DELETE FROM "{table.name}"'))
    return engine


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    """The migrated database, emptied before each test."""
    return empty_database(migrated_engine)


@pytest.fixture
def settings(engine: Engine, tmp_path: Path) -> Settings:
    """Settings for an app on the test database."""
    return Settings(
        data_dir=tmp_path,
        database_url=engine.url.render_as_string(hide_password=False),
        secret_key=TEST_SECRET_KEY,
    )


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """A TestClient on a fresh app over the test database."""
    with TestClient(create_app(settings, engine=engine), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def world(engine: Engine) -> Iterator[World]:
    """Tenants A and B and callers of every role, each with a bearer token."""
    with Session(engine, expire_on_commit=False) as session:
        yield World.build(session)
