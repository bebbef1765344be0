"""exact usage quantities (usage_record.quantity_parts) and VDC budgets exact on SQLite

usage_record gains `quantity_parts`, the row's exact amount as an integer (quantity ×
3,600,000,000: GPU-microseconds for GPU-hours); sums add it and convert once, so quantities no
longer drift by 0.000001 per rounded hour. Existing rows are converted from their stored
6-decimal quantity (exact: quantity × 3.6e9 is an integer); they hold the old per-hour rounding
until their period is run again (`kiln bills run`), which rebuilds its usage exactly. The
covering index of the period sums now covers `quantity_parts` instead of `quantity`.

vdc.budget and vdc_tenant.budget become ExactNumeric: unchanged NUMERIC on PostgreSQL; on
SQLite, where they were floats, integer micro-units (rounded to the 6 decimals they were
written with), as migration 0008 did for the other billing inputs. On SQLite the column is
replaced in place (add, fill, drop, rename: SQLite 3.35 or later), never by recreating `vdc`,
whose removal would cascade to every row that refers to a VDC.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 10:09:00.933239
"""

import sqlalchemy as sa
from alembic import op

from kiln.types import ExactNumeric

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

PARTS_PER_MICRO_UNIT = 3600  # 3,600,000,000 parts per unit / 1,000,000 micro-units per unit
INDEX = "ix_usage_record_hour_source"
INDEX_LEADING = ["hour", "source", "tenant_id", "sku", "unit"]
BUDGETS = ("vdc", "vdc_tenant")


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _sqlite_retype_budgets(new_type: str, convert: str) -> None:
    """SQLite: give each `budget` column `new_type`, its values converted by `convert` (SQL over `budget`).

    Not by batch mode: that recreates the table, and dropping `vdc` would fire the ON DELETE
    CASCADE / SET NULL of every table referring to it (VDC grants, nodes, selectors, budgets,
    leases, usage). A new column is added, filled, the old one dropped and the new one renamed
    (SQLite 3.35 or later); the column moves to the end of the table, which nothing depends on.
    """
    for table in BUDGETS:
        op.execute(f"ALTER TABLE {table} ADD COLUMN budget_0010 {new_type}")
        op.execute(f"UPDATE {table} SET budget_0010 = {convert} WHERE budget IS NOT NULL")
        op.execute(f"ALTER TABLE {table} DROP COLUMN budget")
        op.execute(f"ALTER TABLE {table} RENAME COLUMN budget_0010 TO budget")


def upgrade() -> None:
    op.drop_index(INDEX, table_name="usage_record")
    with op.batch_alter_table("usage_record", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quantity_parts", sa.BigInteger(), nullable=True))
    # SQLite stores quantity as integer micro-units (ExactNumeric); PostgreSQL as NUMERIC(24, 6).
    if _sqlite():
        op.execute(f"UPDATE usage_record SET quantity_parts = quantity * {PARTS_PER_MICRO_UNIT}")
    else:
        op.execute("UPDATE usage_record SET quantity_parts = CAST(quantity * 3600000000 AS BIGINT)")
    with op.batch_alter_table("usage_record", schema=None) as batch_op:
        batch_op.alter_column("quantity_parts", existing_type=sa.BigInteger(), nullable=False)
    op.create_index(INDEX, "usage_record", [*INDEX_LEADING, "quantity_parts"], unique=False)
    if _sqlite():  # floats to integer micro-units, rounded to the 6 decimals they were written with
        _sqlite_retype_budgets("BIGINT", "CAST(ROUND(budget * 1000000) AS INTEGER)")
        return
    for table in BUDGETS:  # PostgreSQL: NUMERIC(20, 6) already, and stays so
        op.alter_column(table, "budget", existing_type=sa.NUMERIC(precision=20, scale=6),
                        type_=ExactNumeric(20, 6), existing_nullable=True)


def downgrade() -> None:
    if _sqlite():
        _sqlite_retype_budgets("NUMERIC(20, 6)", "budget * 0.000001")
    else:
        for table in BUDGETS:
            op.alter_column(table, "budget", existing_type=ExactNumeric(20, 6),
                            type_=sa.NUMERIC(precision=20, scale=6), existing_nullable=True)
    op.drop_index(INDEX, table_name="usage_record")
    with op.batch_alter_table("usage_record", schema=None) as batch_op:  # nothing refers to usage_record
        batch_op.drop_column("quantity_parts")
    op.create_index(INDEX, "usage_record", [*INDEX_LEADING, "quantity"], unique=False)
