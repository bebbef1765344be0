"""gpu_instance_lease: bare-metal leases of a MIG GPU's instances (issue 16)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 18:22:55.255450
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("gpu_instance_lease",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("tenant_id", sa.Integer(), nullable=False),
    sa.Column("node_id", sa.Integer(), nullable=False),
    sa.Column("vdc_id", sa.Integer(), nullable=True),
    sa.Column("gpu_index", sa.Integer(), nullable=False),
    sa.Column("profile", sa.String(length=32), nullable=False),
    sa.Column("starts_at", UTCDateTime(), nullable=False),
    sa.Column("ends_at", UTCDateTime(), nullable=True),
    sa.Column("created_by", sa.String(length=200), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("note", sa.String(length=500), nullable=False),
    sa.CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="ck_gpu_instance_lease_interval"),
    sa.CheckConstraint("gpu_index >= 0", name="ck_gpu_instance_lease_gpu_index"),
    sa.ForeignKeyConstraint(["node_id"], ["node.id"], ondelete="RESTRICT"),
    sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="RESTRICT"),
    sa.ForeignKeyConstraint(["vdc_id"], ["vdc.id"], ondelete="SET NULL"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("gpu_instance_lease", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gpu_instance_lease_node_id"), ["node_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_gpu_instance_lease_starts_at"), ["starts_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_gpu_instance_lease_tenant_id"), ["tenant_id"], unique=False)



def downgrade() -> None:
    with op.batch_alter_table("gpu_instance_lease", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gpu_instance_lease_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_gpu_instance_lease_starts_at"))
        batch_op.drop_index(batch_op.f("ix_gpu_instance_lease_node_id"))

    op.drop_table("gpu_instance_lease")
