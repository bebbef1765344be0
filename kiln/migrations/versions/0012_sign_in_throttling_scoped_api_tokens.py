"""sign-in throttling, scoped API tokens: failed sign-ins per username and address; a token's
scope (read or write), its one tenant, and where it was last used from

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 10:19:18.072384
"""

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('signin_failure',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('last_failed_at', UTCDateTime(), nullable=False),
    sa.Column('locked_until', UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kind', 'key')
    )
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_used_from', sa.String(length=64), nullable=True))
        # existing tokens keep the full rights they were created with
        batch_op.add_column(sa.Column('scope', sa.String(length=8), nullable=False, server_default='write'))
        batch_op.add_column(sa.Column('tenant_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_api_token_tenant_id_tenant', 'tenant', ['tenant_id'], ['id'], ondelete='CASCADE')


def downgrade() -> None:
    # a token limited to read or to one tenant would get its user's full rights back: revoke it
    op.execute("UPDATE api_token SET revoked_at = CURRENT_TIMESTAMP "
               "WHERE revoked_at IS NULL AND (scope <> 'write' OR tenant_id IS NOT NULL)")
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.drop_constraint('fk_api_token_tenant_id_tenant', type_='foreignkey')
        batch_op.drop_column('tenant_id')
        batch_op.drop_column('scope')
        batch_op.drop_column('last_used_from')
    op.drop_table('signin_failure')
