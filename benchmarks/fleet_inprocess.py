"""The fleet page's server work and `GET /api/v1/nodes`, timed in process against a seeded database.

    KILN_DATABASE_URL=postgresql+psycopg://…/kiln_console_copy python -m benchmarks.fleet_inprocess [--repeat 3]

No server, no browser: the page's layout and refresh callback (as an infra admin), one page of
the node table (the default order, deep in it, by a computed column first and then its next page,
a search), the fleet power series (admin: stored sums; tenant member: live over their nodes) and
the nodes endpoint (all, and `limit=100`), each `--repeat` times; min and median seconds per line.
The member is a member of the tenant that holds the most open leases.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlmodel import Session

from benchmarks.inprocess import ADMIN, bench
from dashboards import bulk, node_grid
from dashboards.fleet_data import fleet_power
from dashboards.pages import fleet as fleet_page
from fleet.api import list_endpoint
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.roles import Role


def main() -> None:
    """Time each step and print one line per step."""
    run = bench(__doc__.splitlines()[0])
    engine = run.engine
    with Session(engine) as session:
        tenant = session.exec(text("SELECT tenant_id FROM lease WHERE ends_at IS NULL GROUP BY tenant_id "
                                   "ORDER BY count(*) DESC LIMIT 1")).one()[0]
    admin, member = ADMIN, Principal(username="member", role=Role.TENANT_MEMBER, tenant_ids=frozenset({tenant}))
    timed = run.timed

    def as_(principal: Principal, step: Callable[[], Any], fresh: bool = False) -> Callable[[], Any]:
        return run.as_(principal, step, node_grid.forget if fresh else None)

    def power(principal: Principal) -> Callable[[], Any]:
        def step() -> Any:
            with Session(engine) as session:
                end = utcnow()
                return fleet_power(session, principal, end - timedelta(hours=24), end)
        return step

    def nodes(principal: Principal, limit: int | None = None) -> Callable[[], Any]:
        def step() -> Any:
            with Session(engine) as session:
                return list_endpoint(session=session, principal=principal, tag=None, rack=None, state=None,
                                     provisioner=None, limit=limit, offset=0).body
        return step

    first, deep = {"startRow": 0, "endRow": 50}, {"startRow": 5000, "endRow": 5050}
    by_power = {"startRow": 100, "endRow": 150, "sortModel": [{"colId": "power_watts", "sort": "desc"}]}
    timed("fleet layout (admin)", as_(admin, fleet_page.layout))
    timed("fleet refresh callback, 24 h (admin)", as_(admin, lambda: fleet_page.refresh("24h", None, None, None)))
    timed("node table, first page (admin)", as_(admin, lambda: bulk.node_rows_block(first, "")))
    timed("node table, rows 5000-5050 (admin)", as_(admin, lambda: bulk.node_rows_block(deep, "")))
    timed("node table, by power, first ask (admin)", as_(admin, lambda: bulk.node_rows_block(by_power, ""), True))
    timed("node table, by power, next page (admin)", as_(admin, lambda: bulk.node_rows_block(by_power | deep, "")))
    timed("node table, search 'r01' (admin)", as_(admin, lambda: bulk.node_rows_block(first, "r01"), True))
    timed("node table, first page (member)", as_(member, lambda: bulk.node_rows_block(first, "")))
    timed("fleet power, 24 h (admin)", power(admin))
    timed("fleet power, 24 h (member, its nodes)", power(member))
    timed("GET /api/v1/nodes (admin, all)", nodes(admin))
    timed("GET /api/v1/nodes?limit=100 (admin)", nodes(admin, 100))
    timed("GET /api/v1/nodes (member)", nodes(member))


if __name__ == "__main__":
    main()
