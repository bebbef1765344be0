"""usage_record and rollup_5m partitioned by month on PostgreSQL

Each table is rebuilt as a table partitioned by RANGE on its time column (`hour`, `bucket`):
a partition per month holding existing rows, the coming months' partitions and a default
partition (see kiln.partitions). A partitioned table's unique constraints must include the
partition key: the natural keys already do, and the primary key becomes (id, <time column>);
ids keep coming from the same sequence, and nothing refers to these tables. Constraints, foreign
keys and indexes are copied by name from the old table. Downgrade rebuilds plain tables with
every row still attached (partitions detached for archiving stay as they are).

On SQLite this revision changes nothing: SQLite has no partitioning, and the embedded database
is for demo-scale installations.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 13:55:00
"""

from alembic import op
from sqlalchemy import Connection, text

from kiln.db import utcnow
from kiln.partitions import PARTITIONED, ensure_partitions, month_start

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def _definitions(connection: Connection, table: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The table's constraints (name, type, definition) and its other indexes' CREATE statements."""
    constraints = connection.execute(text(
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = to_regclass(:t) AND contype IN ('p', 'u', 'f') ORDER BY contype, conname"), {"t": table}).all()
    indexes = connection.execute(text(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = to_regclass(:t) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1"), {"t": table}).scalars().all()
    return [tuple(row) for row in constraints], list(indexes)


def _rebuild(table: str, partitioned: bool) -> None:
    """Copy `table` into a new table of the same shape, partitioned by month or plain."""
    connection = op.get_bind()
    key = PARTITIONED[table]
    constraints, indexes = _definitions(connection, table)
    sequence = connection.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table}).scalar()
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
    oldest = connection.execute(text(f"SELECT min({key}) FROM {table}")).scalar()
    op.execute(f"ALTER TABLE {table} RENAME TO {table}__old")
    partition_by = f" PARTITION BY RANGE ({key})" if partitioned else ""
    op.execute(f"CREATE TABLE {table} (LIKE {table}__old INCLUDING DEFAULTS INCLUDING CONSTRAINTS){partition_by}")
    if partitioned:
        ensure_partitions(connection, utcnow(), since=month_start(oldest) if oldest else None, tables=(table,))
    op.execute(f"INSERT INTO {table} SELECT * FROM {table}__old")
    op.execute(f"DROP TABLE {table}__old")  # and its partitions, when it was partitioned
    for name, kind, definition in constraints:
        if kind == "p":
            definition = f"PRIMARY KEY (id, {key})" if partitioned else "PRIMARY KEY (id)"
        op.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    for statement in indexes:
        op.execute(statement)
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {table}.id")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in PARTITIONED:
        _rebuild(table, partitioned=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in PARTITIONED:
        _rebuild(table, partitioned=False)
