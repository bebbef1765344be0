"""usage_record: a partial index of the records other than whole-node leases' (pods', GPU instance
leases', energy), for the usage page's GPU-hours by model (whole-node leases are summed from the
leases themselves). On PostgreSQL it is built on every month partition.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 01:35:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None

INDEX = "ix_usage_record_not_whole_node_gpus"
WHERE = "(source <> 'lease' OR sku LIKE 'gpu-hour:%:%')"  # metering.models.NOT_WHOLE_NODE_GPUS, frozen here


def upgrade() -> None:
    op.create_index(INDEX, "usage_record", ["hour", "tenant_id", "sku", "unit", "source", "quantity_parts"], unique=False,
                    postgresql_where=sa.text(WHERE), sqlite_where=sa.text(WHERE))


def downgrade() -> None:
    op.drop_index(INDEX, table_name="usage_record")
