"""EXPLAIN (ANALYZE) of the main reads of the partitioned tables on PostgreSQL, at scale.

Fills a migrated PostgreSQL database (KILN_DATABASE_URL, which it writes to: use a scratch
database) with MONTHS months of hourly usage for RESOURCES resources of TENANTS tenants and
DAYS days of 5-minute power rollups for ENTITIES nodes (server-side generate_series), ANALYZEs,
and prints the plans of: a period's sums (metering/bills.py, metering/usage.py), one tenant's
period sums, and the console's fleet power and node history reads (dashboards/fleet_data.py,
dashboards/node_data.py). Checks that each plan reads only its month's partitions through an
index, or wholly (a partition all of whose rows the query sums); a sequential scan that filters
rows out fails the run.

    KILN_DATABASE_URL=postgresql+psycopg://… python -m benchmarks.explain_partitions
"""

from __future__ import annotations

import os
import sys

from sqlalchemy import text

from kiln.db import create_db_engine, utcnow
from kiln.partitions import add_months, ensure_partitions, month_start
from kiln.schema import migrate_to

MONTHS, TENANTS, RESOURCES, ENTITIES, DAYS = 6, 50, 200, 200, 14

SEED = [
    "INSERT INTO tenant (id, slug, name, description, created_at) SELECT t, 't' || t, 'T' || t, '', now() "
    f"FROM generate_series(1, {TENANTS}) t ON CONFLICT DO NOTHING",
    "INSERT INTO usage_record (tenant_id, resource_id, sku, quantity, quantity_parts, unit, source, hour) "
    f"SELECT 1 + r % {TENANTS}, 'node-' || r, 'gpu-hour:h100', 8, 28800000000, 'Hours', 'lease', h "
    f"FROM generate_series(date_trunc('month', now()) - interval '{MONTHS - 1} months', now(), interval '1 hour') h, "
    f"generate_series(1, {RESOURCES}) r",
    "INSERT INTO rollup_5m (entity, metric, bucket, count, sum, min, max) "
    "SELECT 'node-' || e, 'power_watts', b, 1, 700, 700, 700 "
    f"FROM generate_series(now() - interval '{DAYS} days', now(), interval '5 minutes') b, generate_series(1, {ENTITIES}) e",
]
VACUUM = ["VACUUM ANALYZE usage_record", "VACUUM ANALYZE rollup_5m"]  # index-only scans need the visibility map
MONTH = "hour >= date_trunc('month', now()) - interval '1 month' AND hour < date_trunc('month', now())"
QUERIES = {
    "period sums (bills.py)": f"SELECT tenant_id, sku, unit, sum(quantity_parts) FROM usage_record WHERE {MONTH} "
                              "GROUP BY tenant_id, sku, unit",
    "one tenant's period sums": f"SELECT sku, unit, sum(quantity_parts) FROM usage_record WHERE tenant_id = 7 AND {MONTH} "
                                "GROUP BY sku, unit",
    "fleet power, last 24 h (fleet_data.py)": "SELECT bucket, sum(sum / count) FROM rollup_5m WHERE metric = 'power_watts' "
        "AND entity IN ('node-1', 'node-2', 'node-3') AND bucket >= now() - interval '24 hours' AND bucket < now() "
        "AND count > 0 GROUP BY bucket ORDER BY bucket",
    "node history, 7 days (node_data.py)": "SELECT * FROM rollup_5m WHERE metric = 'power_watts' AND entity IN ('node-9') "
        "AND bucket >= now() - interval '7 days' AND bucket < now() AND count > 0 ORDER BY entity, bucket",
}


def wasteful_scans(plan: list[str]) -> list[str]:
    """Sequential scans that read rows only to throw them away ("Rows Removed by Filter"); a
    sequential scan of a month partition whose every row the query wants is the right plan."""
    found, scan = [], None
    for line in plan:
        if "->" in line or not line.startswith(" "):
            scan = line if "Seq Scan" in line else None
        elif scan and "Rows Removed by Filter" in line and not line.strip().endswith(": 0"):
            found.append(scan)
    return found


def main() -> int:
    """Seed, explain, and fail (exit 1) when a plan reads rows it throws away in a sequential scan."""
    engine = create_db_engine(os.environ["KILN_DATABASE_URL"])
    migrate_to(engine, "head")
    with engine.begin() as connection:  # the months of the seeded data have partitions, as after migrating them
        ensure_partitions(connection, utcnow(), since=add_months(month_start(utcnow()), -MONTHS))
        for statement in SEED:
            connection.execute(text(statement))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for statement in VACUUM:
            connection.execute(text(statement))
    bad = []
    with engine.connect() as connection:
        for name, query in QUERIES.items():
            plan = connection.execute(text(f"EXPLAIN (ANALYZE, COSTS OFF, SUMMARY ON) {query}")).scalars().all()
            print(f"== {name}\n" + "\n".join(plan) + "\n")
            bad += [f"{name}: {line.strip()}" for line in wasteful_scans(plan)]
    engine.dispose()
    if bad:
        print("sequential scans:\n" + "\n".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
