"""console sessions signed out before their cookie expired

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('revoked_console_session',
    sa.Column('sid', sa.String(length=64), nullable=False),
    sa.Column('expires_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('sid')
    )
    with op.batch_alter_table('revoked_console_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_revoked_console_session_expires_at'), ['expires_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('revoked_console_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_revoked_console_session_expires_at'))

    op.drop_table('revoked_console_session')
