"""usage_day: each tenant's usage per SKU, UTC day and Kubernetes namespace with its share of the
bill line that charged it, written by the bills run beside the bills (metering.usage_days), so the
console's month sums read thousands of rows instead of a month of hourly usage. Filled here for
every period with bills, from its usage records and its bills' usage lines.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 00:32:02.870135
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel import Session

import kiln.types

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('usage_day',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('sku', sa.String(length=128), nullable=False),
    sa.Column('unit', sa.String(length=32), nullable=False),
    sa.Column('namespace', sa.String(length=128), nullable=False),
    sa.Column('quantity_parts', sa.BigInteger(), nullable=False),
    sa.Column('list_cost', kiln.types.ExactNumeric(precision=20, scale=6), nullable=False),
    sa.Column('contracted_cost', kiln.types.ExactNumeric(precision=20, scale=6), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('period', 'tenant_id', 'day', 'sku', 'namespace', name='uq_usage_day_key')
    )
    # The shares are the bills run's own arithmetic (largest remainder per usage line), so the fill
    # uses metering's code as it is at this revision rather than a copy of it in SQL.
    from metering.usage_days import backfill

    with Session(bind=op.get_bind()) as session:
        backfill(session)
        session.flush()


def downgrade() -> None:
    op.drop_table('usage_day')
