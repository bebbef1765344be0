"""fleet: nodes, gpus, tags, operations, events, vdcs, leases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("node",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=63), nullable=False),
    sa.Column("provisioner", sa.String(length=16), nullable=False),
    sa.Column("external_id", sa.String(length=64), nullable=True),
    sa.Column("hardware_type", sa.String(length=32), nullable=False),
    sa.Column("bmc_driver", sa.String(length=16), nullable=False),
    sa.Column("bmc_address", sa.String(length=255), nullable=False),
    sa.Column("bmc_username", sa.String(length=64), nullable=True),
    sa.Column("bmc_password_encrypted", sa.String(length=512), nullable=True),
    sa.Column("ipmi_cipher_suite", sa.Integer(), nullable=True),
    sa.Column("boot_mac", sa.String(length=17), nullable=True),
    sa.Column("resource_class", sa.String(length=64), nullable=True),
    sa.Column("rack", sa.String(length=64), nullable=True),
    sa.Column("facts", sa.JSON(), nullable=False),
    sa.Column("provision_state", sa.String(length=32), nullable=False),
    sa.Column("target_provision_state", sa.String(length=32), nullable=True),
    sa.Column("power_state", sa.String(length=16), nullable=True),
    sa.Column("maintenance", sa.Boolean(), nullable=False),
    sa.Column("maintenance_reason", sa.String(length=255), nullable=True),
    sa.Column("last_error", sa.String(length=2000), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("synced_at", UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("boot_mac"),
    sa.UniqueConstraint("name")
    )
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_external_id"), ["external_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_provision_state"), ["provision_state"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_rack"), ["rack"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_resource_class"), ["resource_class"], unique=False)

    op.create_table("vdc",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=63), nullable=False),
    sa.Column("description", sa.String(length=2000), nullable=False),
    sa.Column("max_nodes", sa.Integer(), nullable=True),
    sa.Column("max_gpus", sa.Integer(), nullable=True),
    sa.Column("max_gpu_hours", sa.Integer(), nullable=True),
    sa.Column("budget", sa.Numeric(precision=20, scale=6), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("name")
    )
    op.create_table("gpu",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("node_id", sa.Integer(), nullable=False),
    sa.Column("index", sa.Integer(), nullable=False),
    sa.Column("uuid", sa.String(length=64), nullable=True),
    sa.Column("model", sa.String(length=128), nullable=False),
    sa.Column("vendor", sa.String(length=16), nullable=False),
    sa.Column("memory_mib", sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(["node_id"], ["node.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("node_id", "index"),
    sa.UniqueConstraint("uuid")
    )
    with op.batch_alter_table("gpu", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gpu_model"), ["model"], unique=False)
        batch_op.create_index(batch_op.f("ix_gpu_node_id"), ["node_id"], unique=False)

    op.create_table("lease",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("tenant_id", sa.Integer(), nullable=False),
    sa.Column("node_id", sa.Integer(), nullable=False),
    sa.Column("vdc_id", sa.Integer(), nullable=True),
    sa.Column("starts_at", UTCDateTime(), nullable=False),
    sa.Column("ends_at", UTCDateTime(), nullable=True),
    sa.Column("created_by", sa.String(length=200), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("note", sa.String(length=500), nullable=False),
    sa.CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="ck_lease_interval"),
    sa.ForeignKeyConstraint(["node_id"], ["node.id"], ondelete="RESTRICT"),
    sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="RESTRICT"),
    sa.ForeignKeyConstraint(["vdc_id"], ["vdc.id"], ondelete="SET NULL"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("lease", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lease_node_id"), ["node_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_lease_starts_at"), ["starts_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_lease_tenant_id"), ["tenant_id"], unique=False)
    _create_lease_overlap_guard()

    op.create_table("node_event",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("node_id", sa.Integer(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("kind", sa.String(length=32), nullable=False),
    sa.Column("message", sa.String(length=2000), nullable=False),
    sa.Column("actor", sa.String(length=200), nullable=False),
    sa.Column("operation_id", sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(["node_id"], ["node.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("node_event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_event_node_id"), ["node_id"], unique=False)

    op.create_table("node_tag",
    sa.Column("node_id", sa.Integer(), nullable=False),
    sa.Column("tag", sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(["node_id"], ["node.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("node_id", "tag")
    )
    with op.batch_alter_table("node_tag", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_tag_tag"), ["tag"], unique=False)

    op.create_table("operation",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("node_id", sa.Integer(), nullable=False),
    sa.Column("bulk_id", sa.String(length=36), nullable=True),
    sa.Column("action", sa.String(length=32), nullable=False),
    sa.Column("requested_by", sa.String(length=200), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("params", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("result_state", sa.String(length=32), nullable=True),
    sa.Column("error", sa.String(length=2000), nullable=True),
    sa.ForeignKeyConstraint(["node_id"], ["node.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("operation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_operation_bulk_id"), ["bulk_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_operation_node_id"), ["node_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_operation_status"), ["status"], unique=False)

    op.create_table("vdc_node",
    sa.Column("vdc_id", sa.Integer(), nullable=False),
    sa.Column("node_id", sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(["node_id"], ["node.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["vdc_id"], ["vdc.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("vdc_id", "node_id")
    )
    with op.batch_alter_table("vdc_node", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vdc_node_node_id"), ["node_id"], unique=False)

    op.create_table("vdc_selector",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("vdc_id", sa.Integer(), nullable=False),
    sa.Column("kind", sa.String(length=16), nullable=False),
    sa.Column("value", sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(["vdc_id"], ["vdc.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("vdc_id", "kind", "value")
    )
    with op.batch_alter_table("vdc_selector", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vdc_selector_vdc_id"), ["vdc_id"], unique=False)

    op.create_table("vdc_tenant",
    sa.Column("vdc_id", sa.Integer(), nullable=False),
    sa.Column("tenant_id", sa.Integer(), nullable=False),
    sa.Column("max_nodes", sa.Integer(), nullable=True),
    sa.Column("max_gpus", sa.Integer(), nullable=True),
    sa.Column("max_gpu_hours", sa.Integer(), nullable=True),
    sa.Column("budget", sa.Numeric(precision=20, scale=6), nullable=True),
    sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="RESTRICT"),
    sa.ForeignKeyConstraint(["vdc_id"], ["vdc.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("vdc_id", "tenant_id")
    )
    with op.batch_alter_table("vdc_tenant", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vdc_tenant_tenant_id"), ["tenant_id"], unique=False)



def _create_lease_overlap_guard() -> None:
    """No two leases of one node may overlap in time: enforced by the database itself."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")  # a trusted extension since PostgreSQL 13
        op.execute(
            "ALTER TABLE lease ADD CONSTRAINT lease_no_overlap EXCLUDE USING gist "
            "(node_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)"
        )
        return
    for event, extra in (("INSERT", ""), ("UPDATE OF node_id, starts_at, ends_at", "AND other.id != NEW.id")):
        name = "lease_no_overlap_" + event.split()[0].lower()
        op.execute(
            f"""CREATE TRIGGER {name} BEFORE {event} ON lease
            WHEN EXISTS (SELECT 1 FROM lease AS other WHERE other.node_id = NEW.node_id {extra}
                AND (other.ends_at IS NULL OR other.ends_at > NEW.starts_at)
                AND (NEW.ends_at IS NULL OR other.starts_at < NEW.ends_at))
            BEGIN SELECT RAISE(ABORT, 'lease_no_overlap: the node is already leased in that interval'); END"""
        )


def downgrade() -> None:
    with op.batch_alter_table("vdc_tenant", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vdc_tenant_tenant_id"))

    op.drop_table("vdc_tenant")
    with op.batch_alter_table("vdc_selector", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vdc_selector_vdc_id"))

    op.drop_table("vdc_selector")
    with op.batch_alter_table("vdc_node", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vdc_node_node_id"))

    op.drop_table("vdc_node")
    with op.batch_alter_table("operation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operation_status"))
        batch_op.drop_index(batch_op.f("ix_operation_node_id"))
        batch_op.drop_index(batch_op.f("ix_operation_bulk_id"))

    op.drop_table("operation")
    with op.batch_alter_table("node_tag", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_tag_tag"))

    op.drop_table("node_tag")
    with op.batch_alter_table("node_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_event_node_id"))

    op.drop_table("node_event")
    with op.batch_alter_table("lease", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lease_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_lease_starts_at"))
        batch_op.drop_index(batch_op.f("ix_lease_node_id"))

    op.drop_table("lease")
    with op.batch_alter_table("gpu", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gpu_node_id"))
        batch_op.drop_index(batch_op.f("ix_gpu_model"))

    op.drop_table("gpu")
    op.drop_table("vdc")
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_resource_class"))
        batch_op.drop_index(batch_op.f("ix_node_rack"))
        batch_op.drop_index(batch_op.f("ix_node_provision_state"))
        batch_op.drop_index(batch_op.f("ix_node_external_id"))

    op.drop_table("node")
