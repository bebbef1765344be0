"""emissions budgets: a budget's unit, money (the bill, in its currency) or kg-co2e

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 11:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # existing budgets are of spend; added in place (batch mode would recreate `budget`, and
    # dropping it would fire the ON DELETE CASCADE of its alerts on SQLite)
    op.add_column('budget', sa.Column('unit', sa.String(length=16), nullable=False, server_default='money'))


def downgrade() -> None:
    # an emissions budget has no currency: it cannot be kept as a spend budget
    op.execute("DELETE FROM budget WHERE unit <> 'money'")
    op.execute("ALTER TABLE budget DROP COLUMN unit")
