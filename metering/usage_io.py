"""Usage rows in bulk: streamed out of and copied into PostgreSQL through psycopg directly.

A month of a large fleet is millions of rows each way; SQLAlchemy's per-row work (row objects,
type processing, one INSERT per row in an executemany) was most of the bills run's client time.
Other databases (SQLite) take the ordinary SQLAlchemy paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cache
from itertools import count

from sqlalchemy import Connection, Select, insert
from sqlmodel import Session

from metering import skus
from metering.intervals import HourlyTotals
from metering.models import UsageRecord

INSERT_CHUNK = 20_000
STREAM_ROWS = 5_000  # rows fetched at a time
_CURSORS = count()
USAGE_COLUMNS = ("tenant_id", "vdc_id", "resource_id", "sku", "quantity", "quantity_parts", "unit", "source", "hour")


def copies(connection: Connection) -> bool:
    """Whether rows can go by COPY and come from the driver directly: PostgreSQL through psycopg 3."""
    return connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg"


def stream_rows(connection: Connection, statement: Select) -> Iterator[tuple]:
    """The statement's rows, STREAM_ROWS at a time from a server-side cursor. With psycopg, straight
    from the driver in UTC: SQLAlchemy's row and type processing (each timestamp converted to UTC)
    nearly doubled the cost of reading a month of allocations."""
    if not copies(connection):
        yield from connection.execute(statement.execution_options(yield_per=STREAM_ROWS))
        return
    compiled = statement.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})  # IN (…) lists
    driver = connection.connection.driver_connection
    zone = driver.info.parameter_status("TimeZone")
    driver.execute("SET LOCAL TimeZone = 'UTC'")  # timestamps then load as datetime.UTC ones
    with driver.cursor(name=f"kiln_stream_{next(_CURSORS)}") as cursor:  # streams may be open at once
        cursor.itersize = STREAM_ROWS
        cursor.execute(str(compiled), compiled.params)
        yield from cursor
    driver.execute("SELECT set_config('TimeZone', %s, true)", (zone,))


def write_rows(session: Session, source: str, totals: HourlyTotals, *, into: str | None = None) -> int:
    """Insert the hourly totals as usage rows of `source`: one COPY on PostgreSQL (psycopg 3), into
    the table `into` if given (a staged partition), else chunks of one executemany each; returns how many."""
    unit_of = cache(skus.unit_of)
    rows = ((tenant_id, vdc_id, resource_id, sku, quantity, parts, unit_of(sku), source, hour)
            for (tenant_id, resource_id, sku), hour, quantity, parts, vdc_id in totals.totals())
    connection = session.connection()
    if copies(connection):
        return _copy_rows(connection, rows, into or UsageRecord.__tablename__)
    count, chunk = 0, []
    for row in rows:
        chunk.append(dict(zip(USAGE_COLUMNS, row)))
        if len(chunk) >= INSERT_CHUNK:
            connection.execute(insert(UsageRecord.__table__), chunk)
            count, chunk = count + len(chunk), []
    if chunk:
        connection.execute(insert(UsageRecord.__table__), chunk)
        count += len(chunk)
    return count


def _copy_rows(connection: Connection, rows: Iterable[tuple], table: str) -> int:
    # COPY in the session's own transaction: a month of 10,000 nodes is millions of rows, and an
    # executemany of INSERTs costs ~10x more (one statement and one round trip per row in pipeline mode)
    count = 0
    with connection.connection.driver_connection.cursor() as cursor:
        with cursor.copy(f"COPY {table} ({', '.join(USAGE_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
    return count
