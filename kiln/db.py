"""Database engine, sessions and the column types every Kiln table shares.

SQLite (embedded default, WAL mode, foreign keys on) and PostgreSQL (psycopg 3) are both
first-class: the test suite runs on each.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event
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
    One statement for all rows, on SQLite and PostgreSQL alike."""
    if not rows:
        return
    table = model.__table__
    if session.get_bind().dialect.name == "postgresql":  # imported here: loading both dialects slows every start
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table)
    if update is None:
        statement = statement.on_conflict_do_nothing(index_elements=list(keys))
    else:
        values = update(table.c, statement.excluded) if callable(update) else {
            name: statement.excluded[name] for name in update}
        statement = statement.on_conflict_do_update(index_elements=list(keys), set_=dict(values))
    session.execute(statement, list(rows))
