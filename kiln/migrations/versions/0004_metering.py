"""metering: price cards, discounts, hourly usage, bills and lines, idle cost, budgets and alerts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 04:51:40.156858
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime
from kiln.types import ExactNumeric  # NUMERIC on PostgreSQL, integer 10^-scale units on SQLite

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("idle_charge",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("period", sa.String(length=7), nullable=False),
    sa.Column("sku", sa.String(length=128), nullable=False),
    sa.Column("unit", sa.String(length=32), nullable=False),
    sa.Column("quantity", ExactNumeric(24, 6), nullable=False),
    sa.Column("unit_price", ExactNumeric(24, 9), nullable=False),
    sa.Column("cost", ExactNumeric(20, 6), nullable=False),
    sa.Column("currency", sa.String(length=3), nullable=False),
    sa.Column("window_start", UTCDateTime(), nullable=False),
    sa.Column("window_end", UTCDateTime(), nullable=False),
    sa.Column("policy", sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("idle_charge", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_idle_charge_period"), ["period"], unique=False)

    op.create_table("price_card",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("sku", sa.String(length=128), nullable=False),
    sa.Column("unit", sa.String(length=32), nullable=False),
    sa.Column("unit_price", ExactNumeric(24, 9), nullable=False),
    sa.Column("currency", sa.String(length=3), nullable=False),
    sa.Column("effective_from", UTCDateTime(), nullable=False),
    sa.Column("effective_to", UTCDateTime(), nullable=True),
    sa.Column("created_by", sa.String(length=200), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("effective_to IS NULL OR effective_to > effective_from", name="ck_price_card_interval"),
    sa.CheckConstraint("unit_price >= 0", name="ck_price_card_price"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("price_card", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_price_card_sku"), ["sku"], unique=False)

    op.create_table("bill",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("tenant_id", sa.Integer(), nullable=False),
    sa.Column("period", sa.String(length=7), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("currency", sa.String(length=3), nullable=False),
    sa.Column("list_total", ExactNumeric(20, 6), nullable=False),
    sa.Column("total", ExactNumeric(20, 6), nullable=False),
    sa.Column("discount_percent", ExactNumeric(9, 6), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("finalised_at", UTCDateTime(), nullable=True),
    sa.Column("finalised_by", sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="RESTRICT"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("tenant_id", "period", name="uq_bill_tenant_period")
    )
    with op.batch_alter_table("bill", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bill_period"), ["period"], unique=False)

    op.create_table("budget",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("tenant_id", sa.Integer(), nullable=False),
    sa.Column("vdc_id", sa.Integer(), nullable=True),
    sa.Column("name", sa.String(length=100), nullable=False),
    sa.Column("amount", ExactNumeric(20, 6), nullable=False),
    sa.Column("currency", sa.String(length=3), nullable=False),
    sa.Column("thresholds", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("amount > 0", name="ck_budget_amount"),
    sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["vdc_id"], ["vdc.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("budget", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budget_tenant_id"), ["tenant_id"], unique=False)

    op.create_table("tenant_discount",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("tenant_id", sa.Integer(), nullable=False),
    sa.Column("percent", ExactNumeric(9, 6), nullable=False),
    sa.Column("note", sa.String(length=500), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("percent >= 0", name="ck_tenant_discount_percent"),
    sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("tenant_id")
    )
    op.create_table("usage_record",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("tenant_id", sa.Integer(), nullable=False),
    sa.Column("vdc_id", sa.Integer(), nullable=True),
    sa.Column("resource_id", sa.String(length=128), nullable=False),
    sa.Column("sku", sa.String(length=128), nullable=False),
    sa.Column("quantity", ExactNumeric(24, 6), nullable=False),
    sa.Column("unit", sa.String(length=32), nullable=False),
    sa.Column("source", sa.String(length=16), nullable=False),
    sa.Column("hour", UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="RESTRICT"),
    sa.ForeignKeyConstraint(["vdc_id"], ["vdc.id"], ondelete="SET NULL"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("tenant_id", "resource_id", "sku", "hour", "source", name="uq_usage_record_key")
    )
    with op.batch_alter_table("usage_record", schema=None) as batch_op:
        batch_op.create_index("ix_usage_record_hour_source", ["hour", "source"], unique=False)
        batch_op.create_index("ix_usage_record_tenant_hour", ["tenant_id", "hour"], unique=False)

    op.create_table("bill_line",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("bill_id", sa.Integer(), nullable=False),
    sa.Column("kind", sa.String(length=16), nullable=False),
    sa.Column("sku", sa.String(length=128), nullable=False),
    sa.Column("unit", sa.String(length=32), nullable=False),
    sa.Column("description", sa.String(length=500), nullable=False),
    sa.Column("quantity", ExactNumeric(24, 6), nullable=False),
    sa.Column("list_unit_price", ExactNumeric(24, 9), nullable=False),
    sa.Column("list_cost", ExactNumeric(20, 6), nullable=False),
    sa.Column("contracted_unit_price", ExactNumeric(24, 9), nullable=False),
    sa.Column("contracted_cost", ExactNumeric(20, 6), nullable=False),
    sa.Column("currency", sa.String(length=3), nullable=False),
    sa.Column("charge_class", sa.String(length=16), nullable=True),
    sa.Column("window_start", UTCDateTime(), nullable=False),
    sa.Column("window_end", UTCDateTime(), nullable=False),
    sa.Column("price_card_id", sa.Integer(), nullable=True),
    sa.Column("corrects_period", sa.String(length=7), nullable=True),
    sa.ForeignKeyConstraint(["bill_id"], ["bill.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["price_card_id"], ["price_card.id"], ondelete="SET NULL"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("bill_line", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bill_line_bill_id"), ["bill_id"], unique=False)

    op.create_table("budget_alert",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("subject", sa.String(length=64), nullable=False),
    sa.Column("kind", sa.String(length=16), nullable=False),
    sa.Column("tenant_id", sa.Integer(), nullable=True),
    sa.Column("budget_id", sa.Integer(), nullable=True),
    sa.Column("vdc_id", sa.Integer(), nullable=True),
    sa.Column("period", sa.String(length=7), nullable=False),
    sa.Column("threshold", sa.Integer(), nullable=False),
    sa.Column("value", ExactNumeric(20, 6), nullable=False),
    sa.Column("limit_value", ExactNumeric(20, 6), nullable=False),
    sa.Column("message", sa.String(length=500), nullable=False),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("delivered_at", UTCDateTime(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("last_error", sa.String(length=500), nullable=True),
    sa.ForeignKeyConstraint(["budget_id"], ["budget.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["vdc_id"], ["vdc.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("subject", "period", "threshold", name="uq_budget_alert_once")
    )
    with op.batch_alter_table("budget_alert", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budget_alert_tenant_id"), ["tenant_id"], unique=False)



def downgrade() -> None:
    with op.batch_alter_table("budget_alert", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_budget_alert_tenant_id"))

    op.drop_table("budget_alert")
    with op.batch_alter_table("bill_line", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bill_line_bill_id"))

    op.drop_table("bill_line")
    with op.batch_alter_table("usage_record", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_record_tenant_hour")
        batch_op.drop_index("ix_usage_record_hour_source")

    op.drop_table("usage_record")
    op.drop_table("tenant_discount")
    with op.batch_alter_table("budget", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_budget_tenant_id"))

    op.drop_table("budget")
    with op.batch_alter_table("bill", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bill_period"))

    op.drop_table("bill")
    with op.batch_alter_table("price_card", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_price_card_sku"))

    op.drop_table("price_card")
    with op.batch_alter_table("idle_charge", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idle_charge_period"))

    op.drop_table("idle_charge")
