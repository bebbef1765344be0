"""A GPU instance lease records its GPU's model and UUID and its node's number of GPUs when it is
made (gpu_instance_lease.gpu_model, gpu_uuid, node_gpus), so billing, carbon and efficiency no
longer look the GPU row up and a GPU row removed or replaced later changes nothing a lease was
billed for. Existing leases are filled in from their GPU's row as it is now; a lease whose GPU row
is already gone gets model '' (its usage shows under `gpu-hour::<profile>`, unpriced rather than
lost) and its node's remaining GPUs + its own.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 21:28:58.024484
"""

import sqlalchemy as sa
from alembic import op

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

_OWN_GPU = 'gpu.node_id = gpu_instance_lease.node_id AND gpu."index" = gpu_instance_lease.gpu_index'


def upgrade() -> None:
    # add_column only (a batch copy on SQLite would drop the table's CHECK constraints); the server
    # defaults only fill the rows the UPDATE below then sets
    op.add_column('gpu_instance_lease', sa.Column('gpu_model', sa.String(length=128), nullable=False, server_default=''))
    op.add_column('gpu_instance_lease', sa.Column('gpu_uuid', sa.String(length=64), nullable=True))
    op.add_column('gpu_instance_lease', sa.Column('node_gpus', sa.Integer(), nullable=False, server_default='1'))
    op.execute(
        "UPDATE gpu_instance_lease SET "
        f"gpu_model = COALESCE((SELECT gpu.model FROM gpu WHERE {_OWN_GPU}), ''), "
        f"gpu_uuid = (SELECT gpu.uuid FROM gpu WHERE {_OWN_GPU}), "
        "node_gpus = (SELECT COUNT(*) FROM gpu WHERE gpu.node_id = gpu_instance_lease.node_id) "
        f"+ CASE WHEN EXISTS (SELECT 1 FROM gpu WHERE {_OWN_GPU}) THEN 0 ELSE 1 END")


def downgrade() -> None:
    for name in ('node_gpus', 'gpu_uuid', 'gpu_model'):
        op.execute(f"ALTER TABLE gpu_instance_lease DROP COLUMN {name}")
