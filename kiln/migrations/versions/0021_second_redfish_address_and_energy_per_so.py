"""A node's second, collection-only Redfish address (node.redfish_address, same credentials as
bmc_address), and energy kept per collector (node_energy_source_hour) so a node two collectors
read counts one figure per node-hour (node_energy_hour.source says whose). Existing hours were
all made by the node's one BMC collector, its bmc_driver: they are copied as that collector's.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 16:03:49.785882
"""

import sqlalchemy as sa
from alembic import op

import kiln.types
from kiln.db import UTCDateTime

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('node_energy_source_hour',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('hour', UTCDateTime(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('kwh', kiln.types.ExactNumeric(precision=18, scale=6), nullable=False),
    sa.Column('covered_seconds', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('node_id', 'hour', 'source')
    )
    op.create_index('ix_node_energy_source_hour_hour', 'node_energy_source_hour', ['hour'], unique=False)
    op.create_index('ix_node_energy_source_hour_node_id', 'node_energy_source_hour', ['node_id'], unique=False)
    # node is referenced by foreign keys: add_column only, never a batch (table copy) on SQLite
    op.add_column('node', sa.Column('redfish_address', sa.String(length=255), nullable=True))
    op.add_column('node_energy_hour', sa.Column('source', sa.String(length=32), nullable=True))
    op.execute("UPDATE node_energy_hour SET source = (SELECT node.bmc_driver FROM node "
               "WHERE node.id = node_energy_hour.node_id)")
    op.execute("INSERT INTO node_energy_source_hour (node_id, hour, source, kwh, covered_seconds, method) "
               "SELECT node_id, hour, source, kwh, covered_seconds, method FROM node_energy_hour")


def downgrade() -> None:
    op.execute("ALTER TABLE node_energy_hour DROP COLUMN source")
    op.execute("ALTER TABLE node DROP COLUMN redfish_address")
    op.drop_index('ix_node_energy_source_hour_node_id', table_name='node_energy_source_hour')
    op.drop_index('ix_node_energy_source_hour_hour', table_name='node_energy_source_hour')
    op.drop_table('node_energy_source_hour')
