"""skipped series per collector target: what the last collection left out, by reason

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 08:58:35.906422
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('collector_target_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('skipped', sa.JSON(), server_default='{}', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('collector_target_state', schema=None) as batch_op:
        batch_op.drop_column('skipped')
