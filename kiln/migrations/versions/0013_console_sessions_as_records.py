"""console sessions as records: created, last used, from where; ended by sign-out, by their
user, by an infra admin or by deactivating the user (replaces revoked_console_session)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 10:35:00
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # console cookies issued before have no record and are refused: their users sign in again once
    op.create_table('console_session',
    sa.Column('sid', sa.String(length=64), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('expires_at', UTCDateTime(), nullable=False),
    sa.Column('created_from', sa.String(length=64), nullable=False),
    sa.Column('last_seen_at', UTCDateTime(), nullable=False),
    sa.Column('last_seen_from', sa.String(length=64), nullable=False),
    sa.Column('user_agent', sa.String(length=200), nullable=False),
    sa.Column('ended_at', UTCDateTime(), nullable=True),
    sa.Column('ended_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sid')
    )
    with op.batch_alter_table('console_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_console_session_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_console_session_user_id'), ['user_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_console_session_username'), ['username'], unique=False)
    with op.batch_alter_table('revoked_console_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_revoked_console_session_expires_at'))
    op.drop_table('revoked_console_session')


def downgrade() -> None:
    op.create_table('revoked_console_session',
    sa.Column('sid', sa.String(length=64), nullable=False),
    sa.Column('expires_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('sid')
    )
    with op.batch_alter_table('revoked_console_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_revoked_console_session_expires_at'), ['expires_at'], unique=False)
    # sessions that were ended stay refused by the older console
    op.execute("INSERT INTO revoked_console_session (sid, expires_at) "
               "SELECT sid, expires_at FROM console_session WHERE ended_at IS NOT NULL")
    with op.batch_alter_table('console_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_console_session_username'))
        batch_op.drop_index(batch_op.f('ix_console_session_user_id'))
        batch_op.drop_index(batch_op.f('ix_console_session_expires_at'))
    op.drop_table('console_session')
