"""Database engine, sessions and the column types every Kiln table shares.

SQLite (embedded default, WAL mode, foreign keys on) and PostgreSQL (psycopg 3) are both
first-class: the test suite runs on each.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import DateTime, Engine, case, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session

from kiln.errors import NotFound


MAX_INTEGER = 2**31 - 1  # the largest value of an INTEGER column on PostgreSQL (ids, counts, quotas)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def create_db_engine(url: str) -> Engine:
    """An engine for a SQLite file (created with its directory, WAL mode) or a PostgreSQL URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=40
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def first_or_not_found(session: Session, statement: Any, message: str) -> Any:
    """The first row of `statement`, or NotFound with `message` (e.g. a scoped lookup by id)."""
    row = session.exec(statement).first()
    if row is None:
        raise NotFound(message)
    return row


def upsert(
    session: Session,
    model: Any,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    update: Sequence[str] | Callable[[Any, Any], Mapping[str, Any]] | None,
) -> None:
    """Insert `rows` into `model`'s table; on a clash of the unique `keys`, update the
    `update` columns from the new row (a callable gets (table, excluded) and returns the SET
    expressions, e.g. to add to a counter), or keep the old row when `update` is None.
    One statement for all rows, on SQLite and PostgreSQL alike: on PostgreSQL, where the rows'
    keys are distinct, `INSERT … SELECT … FROM unnest(…)` of one binary array per column
    (one statement for the server to plan and run, not one per row)."""
    if not rows:
        return
    table = model.__table__
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:  # imported here: loading both dialects slows every start
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table)
    names = list(rows[0])
    arrays = _arrays(session, table, rows, names, keys) if postgres and len(rows) > 1 else None
    defaults = _scalar_defaults(table, names) if arrays is not None else None
    unnest = defaults is not None
    if unnest:
        statement = statement.from_select([*names, *defaults], _unnest_select(table, names, defaults),
                                          include_defaults=False)
    if update is None:
        statement = statement.on_conflict_do_nothing(index_elements=list(keys))
    else:
        values = update(table.c, statement.excluded) if callable(update) else {
            name: statement.excluded[name] for name in update}
        statement = statement.on_conflict_do_update(index_elements=list(keys), set_=dict(values))
    if unnest:
        _execute_unnested(session, statement, arrays)
    else:
        session.execute(statement, list(rows))


# Values psycopg cannot put in one array, and the type that holds them all
_WIDER = {frozenset({int, float}): float, frozenset({int, Decimal}): Decimal, frozenset({bool, int}): int}


def _arrays(session: Session, table: Any, rows: Sequence[Mapping[str, Any]], names: list[str],
            keys: Sequence[str]) -> dict[str, list] | None:
    """Each column's values through its type's bind processing, one list per column; None where
    the rows cannot go as arrays: they differ in their columns, two share their `keys` (one
    statement may not update a row twice; row by row, the later one wins), or a column mixes
    types that no one type holds."""
    key_of, columns = itemgetter(*keys), set(names)
    if any(row.keys() != columns for row in rows) or len(set(map(key_of, rows))) < len(rows):
        return None
    dialect, arrays = session.get_bind().dialect, {}
    for name in names:
        process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        values = [row[name] for row in rows]
        values = list(map(process, values)) if process else values
        kinds = frozenset(map(type, values)) - {type(None)}
        if len(kinds) > 1:
            if kinds not in _WIDER:
                return None
            wider = _WIDER[kinds]
            values = [None if v is None else wider(v) for v in values]
        arrays[name] = values
    return arrays


def _scalar_defaults(table: Any, names: list[str]) -> dict[str, Any] | None:
    """The Python-side defaults of the columns the rows leave out, where all are constants (None
    where one is computed: then it is left to the row-by-row insert, which computes it per row)."""
    defaults = {}
    for column in table.columns:
        if column.name not in names and column.default is not None:
            if not column.default.is_scalar:
                return None
            defaults[column.name] = column.default.arg
    return defaults


def _unnest_select(table: Any, names: list[str], defaults: Mapping[str, Any]) -> Any:
    """SELECT each column of `names` from `unnest` of an array parameter per column (`unnest_NAME`),
    and the `defaults` as constants."""
    from sqlalchemy import bindparam, literal, select
    from sqlalchemy.dialects.postgresql import ARRAY
    from sqlalchemy.sql import func

    arrays = [bindparam(f"unnest_{name}", None, type_=ARRAY(table.c[name].type)) for name in names]
    source = func.unnest(*arrays).table_valued(*names).render_derived()
    constants = [literal(value, type_=table.c[name].type).label(name) for name, value in defaults.items()]
    return select(*[source.c[name] for name in names], *constants)


def _execute_unnested(session: Session, statement: Any, arrays: Mapping[str, list]) -> None:
    """Run `statement` with each column's values as one array sent in binary: psycopg's text
    form escapes every element in Python, several times slower at 10^5 values."""
    dialect = session.get_bind().dialect
    compiled = statement.compile(dialect=dialect)
    sql, params = compiled.string, compiled.construct_params()
    for name, value in params.items():
        if not name.startswith("unnest_") and (process := compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)):
            params[name] = process(value)
    for name, values in arrays.items():
        params[f"unnest_{name}"] = values
        sql = sql.replace(f"%(unnest_{name})s", f"%(unnest_{name})b")
    session.connection().exec_driver_sql(sql, params)


MANY_IDS = 1_000


def among(column: Any, values: Sequence[Any]) -> Any:
    """`column IN values` for a short list; for a long one (the ids of 10,000 nodes) a condition that
    is always true, so the caller reads the whole (small) table and picks its rows by key in Python:
    thousands of bound values cost seconds per query to compile, send and plan."""
    from sqlalchemy import true
    from sqlmodel import col

    return col(column).in_(values) if len(values) <= MANY_IDS else true()


def least(a: Any, b: Any) -> Any:
    """SQL: the smaller of `a` and `b` (a CASE: SQLite has no LEAST)."""
    return case((a < b, a), else_=b)


def greatest(a: Any, b: Any) -> Any:
    """SQL: the larger of `a` and `b` (a CASE: SQLite has no GREATEST)."""
    return case((a > b, a), else_=b)
