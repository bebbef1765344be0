"""The usage page's server work (all tenants, infra admin), timed in process against a seeded database.

    KILN_DATABASE_URL=postgresql+psycopg://…/kiln_console_copy python -m benchmarks.usage_inprocess [--repeat 3]

No server, no browser: the page's layout (and its size as JSON), its overview callback, the
per-lease figures (utilisation), GPU-hours by model computed (cache dropped) and remembered, the
tenant picker's search, each `--repeat` times; min and median seconds per line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import flask
import plotly
from sqlalchemy import create_engine
from sqlmodel import Session

from dashboards import cost_data
from dashboards.components import range_bounds
from dashboards.context import ConsoleContext
from dashboards.pages import usage
from kiln.auth import Principal
from kiln.roles import Role
from metering.efficiency import lease_figures


def main() -> None:
    """Time each step and print one line per step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    engine = create_engine(os.environ["KILN_DATABASE_URL"])
    app = flask.Flask(__name__)
    app.config["KILN_CONSOLE"] = ConsoleContext(settings=None, engine=engine, state=None, codec=None)
    admin = Principal(username="admin", role=Role.INFRA_ADMIN)
    start, end = range_bounds(usage.DEFAULT_RANGE)

    def size(value: Any) -> str:
        return f"{len(json.dumps(value, cls=plotly.utils.PlotlyJSONEncoder)) / 1024:7.1f} KiB"

    def timed(label: str, step: Callable[[], Any], fresh: bool = False) -> None:
        seconds, result = [], None
        for _ in range(repeat):
            if fresh:
                cost_data._CACHE.clear()
            began = time.perf_counter()
            result = step()
            seconds.append(time.perf_counter() - began)
        print(f"{label:44s} min {min(seconds):6.3f} s  median {statistics.median(seconds):6.3f} s  {size(result)}",
              flush=True)

    def as_admin(step: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with app.test_request_context("/"):
                flask.g.principal = admin
                return step()
        return run

    def figures() -> Any:
        with Session(engine) as session:
            return len(lease_figures(session, admin, start, end))

    def by_sku() -> Any:
        with Session(engine) as session:
            return usage.gpu_hours_by_sku(session, admin, start, end, None)

    timed("usage layout (admin, all tenants)", as_admin(usage.layout))
    timed("usage overview callback (admin)", as_admin(lambda: usage.update(usage.ALL, usage.DEFAULT_RANGE)))
    timed("lease figures, 7 d (admin)", figures)
    timed("GPU-hours by model, computed (admin)", by_sku, fresh=True)
    timed("GPU-hours by model, remembered (admin)", by_sku)
    if hasattr(usage, "tenant_options"):
        timed("tenant picker search 'acme' (admin)", as_admin(lambda: usage.tenant_options("acme", usage.ALL)))


if __name__ == "__main__":
    main()
