"""health_snapshot and collector_target_state: room on each page for a row's next version
(fillfactor 50, PostgreSQL only).

Every collector cycle rewrites each polled target's state row and each of its series' snapshot row
(30 rows a BMC). With full pages PostgreSQL put each new version on another page and updated every
index of the table for it; with room on the page the update is heap-only (HOT: no index touched,
the old version pruned in place). At 1,000 BMCs a steady cycle's store took 1.0-1.3 s instead of
1.4-1.6 s. Pages filled before this revision get the room as their rows move (or at once with
`VACUUM FULL health_snapshot`). SQLite updates rows in place anyway.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07 07:20:00
"""

from alembic import op

revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None

TABLES = ("health_snapshot", "collector_target_state")
FILLFACTOR = 50


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
