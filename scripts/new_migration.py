"""Draft a new Alembic revision from the models: `python scripts/new_migration.py "add node table"`.

Migrates a scratch SQLite database to head, autogenerates the difference to the models into
kiln/migrations/versions/NNNN_<slug>.py, and leaves it for you to review (check PostgreSQL-
specific types and constraints; tests/test_schema.py checks both databases).
"""

import re
import sys
import tempfile
from pathlib import Path

from alembic import command

from kiln.db import create_db_engine
from kiln.schema import MIGRATIONS_DIR, _config, head_revision, upgrade


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/new_migration.py MESSAGE")
    message = sys.argv[1]
    number = int(head_revision()) + 1
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40]
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_db_engine(f"sqlite:///{Path(scratch) / 'scratch.db'}")
        upgrade(engine)
        with engine.begin() as connection:
            command.revision(_config(connection), message=message, autogenerate=True, rev_id=f"{number:04d}")
    generated = next(MIGRATIONS_DIR.glob(f"versions/{number:04d}_*.py"))
    target = generated.with_name(f"{number:04d}_{slug}.py")
    generated.rename(target)
    text = target.read_text().replace("sqlmodel.sql.sqltypes.AutoString", "sa.String")
    target.write_text(text.replace("kiln.db.UTCDateTime(timezone=True)", "UTCDateTime()"))
    print(f"wrote {target}: review it before committing")


if __name__ == "__main__":
    main()
