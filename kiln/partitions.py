"""Monthly partitions of the big time-series tables on PostgreSQL.

`usage_record` (by `hour`) and `rollup_5m` (by `bucket`) are partitioned by RANGE on
PostgreSQL (migration 0019): one partition per calendar month in UTC, named
`<table>_YYYY_MM`, plus `<table>_default` for rows outside every month partition. Kiln
creates the coming months' partitions ahead (on `kiln migrate` and from the worker's
`partitions-ahead` job); old months can be detached for archiving (`kiln db partitions
detach YYYY-MM`) and, for rollups, are dropped by the retention job. On SQLite the tables are
plain tables and none of this applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, text

from kiln.errors import Conflict

# Partitioned table → its partition key (a UTC timestamp column).
PARTITIONED = {"usage_record": "hour", "rollup_5m": "bucket"}
MONTHS_AHEAD = 3  # the current month and the next three always have their partition
_PARTITION_NAME = re.compile(r"^(?P<table>%s)_(?:(?P<year>\d{4})_(?P<month>\d{2})|default)$" % "|".join(PARTITIONED))
_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
LOCK_KEY = 0x6B706172  # "kpar": one session at a time changes partitions


class PartitionError(Conflict):
    """A partition operation cannot be done; the message says why."""


def is_partition_name(name: str) -> bool:
    """True for a name Kiln gives partitions (`usage_record_2026_01`, `rollup_5m_default`):
    attached or detached for archiving, they are not tables of the models."""
    return _PARTITION_NAME.match(name) is not None


def month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of the month holding `moment`."""
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def add_months(start: datetime, months: int) -> datetime:
    """The first instant of the month `months` after the month starting at `start`."""
    index = start.year * 12 + start.month - 1 + months
    return start.replace(year=index // 12, month=index % 12 + 1)


def parse_period(period: str) -> datetime:
    """`YYYY-MM` → the first instant of that month; a clear error otherwise."""
    match = _PERIOD.match(period)
    if not match:
        raise PartitionError(f"{period!r} is not a month: write YYYY-MM, e.g. 2026-01")
    return datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)


def partition_name(table: str, start: datetime) -> str:
    """The name of `table`'s partition for the month starting at `start`."""
    return f"{table}_{start:%Y_%m}"


def is_partitioned(connection: Connection, table: str) -> bool:
    """True when `table` is a partitioned table on this (PostgreSQL) database."""
    if connection.dialect.name != "postgresql":
        return False
    kind = connection.execute(text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}).scalar()
    return kind == "p"


def _exists(connection: Connection, name: str) -> bool:
    return connection.execute(text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}).scalar()


def create_month(connection: Connection, table: str, start: datetime) -> bool:
    """Create `table`'s partition for the month starting at `start` unless it exists (True when
    created). Rows of that month already in the default partition move into the new one."""
    name, key, end = partition_name(table, start), PARTITIONED[table], add_months(start, 1)
    if _exists(connection, name):
        return False
    bounds = {"start": start, "end": end}
    default = f"{table}_default"
    stranded = _exists(connection, default) and connection.execute(
        text(f"SELECT EXISTS (SELECT 1 FROM {default} WHERE {key} >= :start AND {key} < :end)"), bounds).scalar()
    values = f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    if not stranded:
        connection.execute(text(f"CREATE TABLE {name} PARTITION OF {table} {values}"))
        return True
    # Attaching checks that the default partition holds no row of the new range: move them first.
    connection.execute(text(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
    connection.execute(text(
        f"WITH moved AS (DELETE FROM {default} WHERE {key} >= :start AND {key} < :end RETURNING *) "
        f"INSERT INTO {name} SELECT * FROM moved"), bounds)
    connection.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {name} {values}"))
    return True


def _attached(connection: Connection, table: str, name: str) -> bool:
    return connection.execute(text(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = to_regclass(:t) AND inhrelid = to_regclass(:n))"),
        {"t": table, "n": name}).scalar()


def stage_month(connection: Connection, table: str, start: datetime, end: datetime) -> str | None:
    """For rewriting all of `table`'s rows in [start, end) when that range is exactly one attached
    month partition: a new, empty table shaped like `table`, without indexes, to fill and then
    put in the partition's place with `swap_month` in the same transaction. None otherwise
    (SQLite, another range, no such partition): delete and insert the rows instead.

    Loading a bare table and then building its indexes costs PostgreSQL a fraction of inserting
    into the indexed partition (per row: four index insertions and a foreign-key check). Holds
    the partition lock (`LOCK_KEY`) to the end of the transaction, so the partition cannot be
    detached or created meanwhile."""
    if start != month_start(start) or end != add_months(start, 1) or not is_partitioned(connection, table):
        return None
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    name = partition_name(table, start)
    if not _attached(connection, table, name):
        return None
    staged = f"{name}_rebuild"
    connection.execute(text(f"CREATE TABLE {staged} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
    return staged


def swap_month(connection: Connection, table: str, start: datetime, staged: str) -> None:
    """Put `staged` (from `stage_month`, filled) in place of `table`'s partition of the month
    starting at `start`, keeping the partition's name, indexes and constraints.

    The slow work happens first, while readers still read the old partition: `staged` gets the
    partition's indexes (built by sorting), foreign keys (checked in one pass), a CHECK of the
    month's bounds (so attaching need not scan it) and statistics. Then the old partition is
    detached and dropped and `staged` attached under its name: from there to the end of the
    transaction, readers of `table` wait (the detach locks it)."""
    name, end, key = partition_name(table, start), add_months(start, 1), PARTITIONED[table]
    bounds = f"{name}_bounds"
    connection.execute(text(f"ALTER TABLE {staged} ADD CONSTRAINT {bounds} "
                            f"CHECK ({key} >= '{start.isoformat()}' AND {key} < '{end.isoformat()}')"))
    for fk in connection.execute(text("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                                      "WHERE conrelid = to_regclass(:t) AND contype = 'f'"), {"t": name}).all():
        connection.execute(text(f'ALTER TABLE {staged} ADD CONSTRAINT "{fk[0]}" {fk[1]}'))
    renames = _copy_indexes(connection, name, staged)
    connection.execute(text(f"ANALYZE {staged}"))
    connection.execute(text(f"ALTER TABLE {table} DETACH PARTITION {name}"))
    connection.execute(text(f"DROP TABLE {name}"))
    connection.execute(text(f"ALTER TABLE {staged} RENAME TO {name}"))
    for temporary, final in renames:  # renaming a constraint's index renames the constraint
        connection.execute(text(f'ALTER INDEX "{temporary}" RENAME TO "{final}"'))
    connection.execute(text(
        f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"))
    connection.execute(text(f"ALTER TABLE {name} DROP CONSTRAINT {bounds}"))


def _copy_indexes(connection: Connection, source: str, target: str) -> list[tuple[str, str]]:
    """Build `source`'s indexes (and primary/unique constraints) on `target` under temporary names;
    returns (temporary, source's name) pairs."""
    rows = connection.execute(text(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), k.contype FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid "
        "AND k.conrelid = i.indrelid WHERE i.indrelid = to_regclass(:t) ORDER BY c.relname"), {"t": source}).all()
    renames = []
    for n, (index, definition, constraint) in enumerate(rows):
        temporary = f"{target}_index_{n}"
        columns = definition[definition.index(" USING "):]
        unique = "UNIQUE " if definition.startswith("CREATE UNIQUE") else ""
        connection.execute(text(f'CREATE {unique}INDEX "{temporary}" ON {target}{columns}'))
        if constraint in ("p", "u"):
            kind = "PRIMARY KEY" if constraint == "p" else "UNIQUE"
            connection.execute(text(f'ALTER TABLE {target} ADD CONSTRAINT "{temporary}" {kind} USING INDEX "{temporary}"'))
        renames.append((temporary, index))
    return renames


def ensure_partitions(connection: Connection, now: datetime, *, since: datetime | None = None,
                      ahead: int = MONTHS_AHEAD, tables: tuple[str, ...] = tuple(PARTITIONED)) -> list[str]:
    """Create every missing month partition from `since` (default: the current month) to `ahead`
    months after `now`, the default partition, and a partition for each month with rows in the
    default partition (moving them), for each partitioned table; idempotent. Returns the names
    created. Does nothing on SQLite or before migration 0019."""
    created: list[str] = []
    for table in tables:
        if not is_partitioned(connection, table):
            continue
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        if not _exists(connection, f"{table}_default"):
            connection.execute(text(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT"))
            created.append(f"{table}_default")
        month, last = month_start(since or now), add_months(month_start(now), ahead)
        while month <= last:
            if create_month(connection, table, month):
                created.append(partition_name(table, month))
            month = add_months(month, 1)
        for month in _months_in_default(connection, table):  # backfills, far-future rows
            if create_month(connection, table, month):
                created.append(partition_name(table, month))
    return created


def _months_in_default(connection: Connection, table: str) -> list[datetime]:
    """The months of the rows in `table`'s default partition (a month whose partition was
    detached for archiving keeps its rows there: its name is taken)."""
    key = PARTITIONED[table]
    starts = connection.execute(text(
        f"SELECT DISTINCT date_trunc('month', {key} AT TIME ZONE 'UTC') FROM {table}_default")).scalars().all()
    return sorted(start.replace(tzinfo=UTC) for start in starts)


def ensure_partitions_now(engine: Engine, now: datetime) -> list[str]:
    """`ensure_partitions` in its own transaction (the worker job and `kiln migrate`)."""
    with engine.begin() as connection:
        return ensure_partitions(connection, now)


@dataclass(frozen=True)
class Partition:
    """One month (or the default) partition of a partitioned table, attached or detached."""

    table: str
    name: str
    start: datetime | None  # None for the default partition
    attached: bool
    rows: int  # PostgreSQL's estimate (pg_class.reltuples) after ANALYZE/VACUUM; -1 when never analysed
    bytes: int

    @property
    def month(self) -> str:
        """`YYYY-MM`, or `default`."""
        return f"{self.start:%Y-%m}" if self.start else "default"


def list_partitions(connection: Connection) -> list[Partition]:
    """Every partition Kiln made (attached ones and those detached for archiving), by table and month."""
    rows = connection.execute(text(
        "SELECT c.relname, i.inhrelid IS NOT NULL, c.reltuples::bigint, pg_total_relation_size(c.oid) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema() "
        "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid WHERE c.relkind = 'r'")).all()
    found = []
    for name, attached, estimate, size in rows:
        match = _PARTITION_NAME.match(name)
        if match:
            start = datetime(int(match["year"]), int(match["month"]), 1, tzinfo=UTC) if match["year"] else None
            found.append(Partition(match["table"], name, start, bool(attached), int(estimate), int(size)))
    return sorted(found, key=lambda p: (p.table, p.start is None, p.start or datetime.min.replace(tzinfo=UTC)))


def require_partitioned(connection: Connection) -> None:
    """Raise PartitionError unless this database has Kiln's partitioned tables."""
    if connection.dialect.name != "postgresql":
        raise PartitionError("partitions exist only on PostgreSQL; this Kiln uses SQLite, whose tables are not partitioned")
    if not all(is_partitioned(connection, table) for table in PARTITIONED):
        raise PartitionError("the tables are not partitioned yet: run `kiln migrate`")


def detach_month(connection: Connection, period: str, now: datetime, tables: tuple[str, ...] = tuple(PARTITIONED)) -> list[str]:
    """Detach each table's partition of month `period` (`YYYY-MM`) for archiving: it becomes a
    plain table of the same name, no longer read by Kiln. Only a month that is over can be
    detached. Returns the names detached."""
    require_partitioned(connection)
    start = parse_period(period)
    if add_months(start, 1) > now:
        raise PartitionError(f"{period} is not over yet: only past months can be detached")
    names = [partition_name(table, start) for table in tables]
    attached = {p.name for p in list_partitions(connection) if p.attached}
    if not attached & set(names):
        raise PartitionError(f"no attached partition for {period} (see `kiln db partitions`)")
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    detached = []
    for table, name in zip(tables, names, strict=True):
        if name in attached:
            connection.execute(text(f"ALTER TABLE {table} DETACH PARTITION {name}"))
            detached.append(name)
    return detached


def drop_months_before(connection: Connection, table: str, cutoff: datetime) -> list[str]:
    """Drop `table`'s attached month partitions that end at or before `cutoff` (retention)."""
    if not is_partitioned(connection, table):
        return []
    dropped = []
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    for partition in list_partitions(connection):
        if partition.table == table and partition.attached and partition.start and add_months(partition.start, 1) <= cutoff:
            connection.execute(text(f"DROP TABLE {partition.name}"))
            dropped.append(partition.name)
    return dropped
