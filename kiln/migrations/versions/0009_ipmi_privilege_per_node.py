"""ipmi privilege per node: the IPMI session level a node's BMC wants (user, operator, admin)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 09:18:20.034787
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ipmi_privilege', sa.String(length=16), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite that recreates `node`, and dropping it would fire the ON DELETE
    # CASCADE of every table referring to nodes (GPUs, tags, leases …). SQLite ≥ 3.35 drops a column in place.
    op.execute("ALTER TABLE node DROP COLUMN ipmi_privilege")
