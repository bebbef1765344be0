"""exact billing inputs on SQLite, and OpenCost's full cost breakdown

kWh per node-hour, Kubernetes request quantities and OpenCost's figures become ExactNumeric:
unchanged NUMERIC on PostgreSQL; on SQLite, where they were stored as floats, integer
micro-units (the stored floats are rounded to the 6 decimals they were written with). OpenCost's
columns become nullable (OpenCost writes NaN as null) and gain the adjustment, load-balancer
and external costs that its totalCost includes. A downgrade drops OpenCost rows holding a null
(the old columns could not store one): re-import them from OpenCost after it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 09:10:00.995552
"""

import sqlalchemy as sa
from alembic import op

from kiln.types import ExactNumeric

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

SCALE = 6
# table -> column -> precision
EXACT = {
    "k8s_allocation": {"quantity": 24},
    "node_energy_hour": {"kwh": 18},
    "opencost_allocation": {"cpu_core_hours": 24, "gpu_hours": 24, "ram_byte_hours": 30, "cpu_cost": 18,
                            "gpu_cost": 18, "ram_cost": 18, "pv_cost": 18, "network_cost": 18, "shared_cost": 18,
                            "total_cost": 18},
}
NEW_OPENCOST_COLUMNS = ("load_balancer_cost", "external_cost", "cpu_cost_adjustment", "gpu_cost_adjustment",
                        "ram_cost_adjustment", "pv_cost_adjustment", "network_cost_adjustment",
                        "load_balancer_cost_adjustment")


def _rescale(table: str, columns: dict[str, int], factor: str) -> None:
    """SQLite only: floats to integer micro-units (factor '1000000') or back ('0.000001')."""
    if op.get_bind().dialect.name != "sqlite":
        return
    rounding = "CAST(ROUND({0} * 1000000) AS INTEGER)" if factor == "1000000" else "{0} * 0.000001"
    sets = ", ".join(f"{name} = {rounding.format(name)}" for name in columns)
    op.execute(f"UPDATE {table} SET {sets}")


def upgrade() -> None:
    for table, columns in EXACT.items():
        _rescale(table, columns, "1000000")
        nullable = table == "opencost_allocation"
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name, precision in columns.items():
                batch_op.alter_column(name, existing_type=sa.NUMERIC(precision=precision, scale=SCALE),
                                      type_=ExactNumeric(precision, SCALE), nullable=nullable)
            if table == "opencost_allocation":
                for name in NEW_OPENCOST_COLUMNS:
                    batch_op.add_column(sa.Column(name, ExactNumeric(18, SCALE), nullable=True))


def downgrade() -> None:
    for table, columns in EXACT.items():
        if table == "opencost_allocation":
            op.execute("DELETE FROM opencost_allocation WHERE " + " OR ".join(f"{name} IS NULL" for name in columns))
        with op.batch_alter_table(table, schema=None) as batch_op:
            if table == "opencost_allocation":
                for name in NEW_OPENCOST_COLUMNS:
                    batch_op.drop_column(name)
            for name, precision in columns.items():
                batch_op.alter_column(name, existing_type=ExactNumeric(precision, SCALE),
                                      type_=sa.NUMERIC(precision=precision, scale=SCALE), nullable=False)
        _rescale(table, columns, "0.000001")
