"""bill.usage_through: the instant the last bills run counted usage up to (forecasts extrapolate from it)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 12:45:15
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # added in place: batch mode would recreate `bill`, which bill_line references (ON DELETE CASCADE)
    op.add_column('bill', sa.Column('usage_through', UTCDateTime(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE bill DROP COLUMN usage_through")
