"""What the in-process timing tools share (`fleet_inprocess`, `usage_inprocess`, `costs_inprocess`):
the database and a console request context without a server, and the timing loop.

These tools time a page's server work against a copy of a seeded database (`KILN_DATABASE_URL`);
they are diagnostics, not benchmarks with a baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flask
import plotly.io
from sqlalchemy import Engine, create_engine

from dashboards.context import ConsoleContext
from kiln.auth import Principal
from kiln.roles import Role
from kiln.settings import Settings, load_settings

ADMIN = Principal(username="admin", role=Role.INFRA_ADMIN)


@dataclass
class Bench:
    """The database, a Flask app holding the console's context, and how many times each step runs."""

    engine: Engine
    app: flask.Flask
    repeat: int
    settings: Settings

    def as_(self, principal: Principal, step: Callable[[], Any], before: Callable[[], None] | None = None
            ) -> Callable[[], Any]:
        """`step` run inside a console request of `principal` (after `before`, e.g. dropping a cache)."""
        def run() -> Any:
            if before is not None:
                before()
            with self.app.test_request_context("/"):
                flask.g.principal = principal
                return step()
        return run

    def timed(self, label: str, step: Callable[[], Any], before: Callable[[], None] | None = None,
              show: Callable[[Any], str] | None = None) -> Any:
        """Run `step` `repeat` times (each after `before`), print min and median seconds (and
        `show(result)`), return the last result."""
        seconds, result = [], None
        for _ in range(self.repeat):
            if before is not None:
                before()
            began = time.perf_counter()
            result = step()
            seconds.append(time.perf_counter() - began)
        extra = f"  {show(result)}" if show is not None else ""
        print(f"{label:48s} min {min(seconds):6.3f} s  median {statistics.median(seconds):6.3f} s{extra}", flush=True)
        return result


def bench(description: str) -> Bench:
    """Parse `--repeat` and open the database of `KILN_DATABASE_URL` (Kiln's settings)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    settings = load_settings()
    engine = create_engine(settings.database_url)
    app = flask.Flask(__name__)
    app.config["KILN_CONSOLE"] = ConsoleContext(settings=settings, engine=engine, state=None, codec=None)
    return Bench(engine=engine, app=app, repeat=repeat, settings=settings)


def size(value: Any) -> int:
    """Bytes of `value` as Dash sends it (plotly's JSON encoder knows Dash components and figures)."""
    return len(plotly.io.json.to_json_plotly(value))
