"""The usage page's server work (all tenants, infra admin), timed in process against a seeded database.

    KILN_DATABASE_URL=postgresql+psycopg://…/kiln_console_copy python -m benchmarks.usage_inprocess [--repeat 3]

No server, no browser: the page's layout (and its size as JSON), its overview callback, the
per-lease figures (utilisation), GPU-hours by model computed (cache dropped) and remembered, the
tenant picker's search, each `--repeat` times; min and median seconds per line.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from benchmarks.inprocess import ADMIN, bench, size
from dashboards import cost_data
from dashboards.components import day_range_bounds
from dashboards.pages import usage
from dashboards.tenant_picker import ALL, tenant_options
from metering.efficiency import lease_figures


def main() -> None:
    """Time each step and print one line per step."""
    run = bench(__doc__.splitlines()[0])
    start, end = day_range_bounds(usage.DEFAULT_RANGE)

    def kib(value: Any) -> str:
        return f"{size(value) / 1024:7.1f} KiB"

    def figures() -> Any:
        with Session(run.engine) as session:
            return len(lease_figures(session, ADMIN, start, end))

    def by_sku() -> Any:
        with Session(run.engine) as session:
            return usage.gpu_hours_by_sku(session, ADMIN, start, end, None)

    run.timed("usage layout (admin, all tenants)", run.as_(ADMIN, usage.layout), show=kib)
    run.timed("usage overview callback (admin)", run.as_(ADMIN, lambda: usage.update(ALL, usage.DEFAULT_RANGE)),
              show=kib)
    run.timed("lease figures, 7 d (admin)", figures, show=kib)
    run.timed("GPU-hours by model, computed (admin)", by_sku, before=cost_data._CACHE.clear, show=kib)
    run.timed("GPU-hours by model, remembered (admin)", by_sku, show=kib)
    run.timed("tenant picker search 'acme' (admin)", run.as_(ADMIN, lambda: tenant_options("acme", ALL)),
              show=kib)


if __name__ == "__main__":
    main()
