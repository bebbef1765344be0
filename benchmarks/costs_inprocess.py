"""The costs page's server work and the costs API baseline, timed in process against a seeded database.

    KILN_DATABASE_URL=postgresql+psycopg://…/kiln_console_copy python -m benchmarks.costs_inprocess [--repeat 3]

No server, no browser: the page's layout, its update callback (all tenants, the latest billed
period) and each data function behind it, as an infra admin (all tenants), with the size of what
the callback returns (the browser parses and draws it); then the four API calls the console
benchmark's baseline makes. Min and median seconds per line, `--repeat` times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlmodel import Session, func, select

from benchmarks.inprocess import ADMIN, bench, size
from dashboards import cost_data, cost_tables
from dashboards.pages import costs as costs_page
from dashboards.tenant_picker import ALL
from metering.budgets import CarbonContext
from metering.models import Bill


def main() -> None:
    """Time each step and print one line per step."""
    run = bench(__doc__.splitlines()[0])
    admin, timed = ADMIN, run.timed
    carbon = CarbonContext.of(run.settings)
    with Session(run.engine) as session:
        period = session.exec(select(func.max(Bill.period))).one()

    def page(step: Callable[[], Any]) -> Callable[[], Any]:
        return run.as_(admin, step)

    def data(step: Callable[[Session], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with Session(run.engine) as session:
                return step(session)
        return call

    print(f"period {period}")
    timed("costs layout (admin)", page(costs_page.layout))
    outputs = timed("costs update callback (admin, all)", page(lambda: costs_page.update(ALL, period)))
    for spec, value in zip(costs_page.OUTPUTS, outputs, strict=True):
        print(f"  {spec.component_id}.{spec.component_property:10s} {size(value):>10,} bytes")
    first, deep = {"startRow": 0, "endRow": 50}, {"startRow": 1000, "endRow": 1050}
    by_tenant = {**first, "sortModel": [{"colId": "tenant", "sort": "desc"}]}
    for table in (cost_tables.BILLS, cost_tables.BUDGETS, cost_tables.ALERTS):
        for label, request in (("first page", first), ("rows 1000-1050", deep), ("by tenant", by_tenant)):
            block = timed(f"  {table}, {label}", page(lambda: cost_tables.rows_block(table, request, "all", period)))
            print(f"    {size(block):>10,} bytes, {block['rowCount']} rows")
    timed("  spend_summary", data(lambda s: cost_data.spend_summary(s, admin, period)))
    timed("  spend_by_sku", data(lambda s: cost_data.spend_by_sku(s, admin, period)))
    timed("  spend_by_day", data(lambda s: cost_data.spend_by_day(s, admin, period)))
    timed("  budget_rows", data(lambda s: cost_data.budget_rows(s, admin, period, None, carbon)))
    timed("  budget_alerts", data(lambda s: cost_data.budget_alerts(s, admin, period)))
    timed("  emissions_summary", data(lambda s: cost_data.emissions_summary(s, admin, period, None, carbon)))


if __name__ == "__main__":
    main()
