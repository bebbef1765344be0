"""fleet_power_5m: the whole fleet's DCMI power per sealed 5-minute bucket (collectors.fleet_power),
filled here from the rollups already kept (buckets sealed now: ended 10 minutes ago or more).

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 00:32:36.408572
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from kiln.db import UTCDateTime

revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


def upgrade() -> None:
    from collectors.fleet_power import POWER_METRIC, sealed_before

    op.create_table('fleet_power_5m',
    sa.Column('bucket', UTCDateTime(), nullable=False),
    sa.Column('watts', sa.Float(), nullable=False),
    sa.Column('nodes', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('bucket')
    )
    # the same sum as collectors.fleet_power.live_totals, over the enrolled nodes
    op.get_bind().execute(sa.text(
        "INSERT INTO fleet_power_5m (bucket, watts, nodes) "
        "SELECT bucket, SUM(sum / CAST(count AS FLOAT)), COUNT(*) FROM rollup_5m "
        "WHERE metric = :metric AND count > 0 AND bucket < :sealed AND entity IN (SELECT name FROM node) "
        "GROUP BY bucket"
    ).bindparams(sa.bindparam("sealed", type_=UTCDateTime)), {"metric": POWER_METRIC, "sealed": sealed_before(datetime.now(UTC))})


def downgrade() -> None:
    op.drop_table('fleet_power_5m')
