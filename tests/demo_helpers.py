"""The demo's data in a test database without its simulators: seed it, then bill periods."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from dashboards.demo import seed
from fleet.runtime import FleetRuntime
from kiln.auth import Principal
from kiln.settings import Settings
from metering.bills import run_period
from tests.conftest import TEST_SECRET_KEY, empty_database


def fake_bmcs() -> dict[str, dict]:
    """BMC entries in the shape the demo's simulator reports (nothing listens there)."""
    return {name: {"host": "127.0.0.1", "port": 10000 + n, "username": "admin", "password": "demo-bmc-password"}
            for n, name in enumerate(seed.node_names())}


def seeded_demo(engine: Engine, data_dir: Path, now: datetime, periods: Iterable[str], principal: Principal) -> Engine:
    """`engine`'s database emptied, holding the demo's fleet, tenants, leases, price cards and
    budgets as of `now`, with `periods` billed as of `now`."""
    empty_database(engine)
    settings = Settings(data_dir=data_dir, secret_key=TEST_SECRET_KEY)
    with Session(engine) as session:
        seed.seed(session, FleetRuntime.build(settings, engine), fake_bmcs(), now)
        session.commit()
    for period in periods:
        with Session(engine) as session:
            run_period(session, principal, period, policy="platform", now=now)
            session.commit()
    return engine
