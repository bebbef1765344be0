"""Schema management: run Alembic migrations and check that a database is current.

Kiln refuses to start against a database that is not migrated, or that was migrated by a
newer Kiln; `kiln migrate` is the one way to change the schema.

Alembic is imported only where it is used: `ensure_current`, which every CLI command runs,
first compares the database's revision with the newest migration file's number (revision ids
are the files' numbers, scripts/new_migration.py) and needs Alembic only when they differ.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from sqlalchemy import Engine, MetaData, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Every module that defines tables; domain packages add theirs here as they grow.
MODEL_MODULES = ("kiln.models", "fleet.models", "fleet.tenancy_models", "collectors.models", "metering.models")


class SchemaError(Exception):
    """The database schema is not the one this Kiln expects; the message says what to run."""


def target_metadata() -> MetaData:
    """The metadata of every Kiln table (imports each model module once)."""
    for module in MODEL_MODULES:
        importlib.import_module(module)
    from metering.models import declare_partial_indexes

    declare_partial_indexes()
    return SQLModel.metadata


def _config(connection: object | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The newest revision this Kiln knows."""
    return _scripts().get_current_head()


def newest_migration_file_revision() -> str:
    """The newest migration's revision as its file name gives it (`0015_….py` → `0015`), read
    without Alembic; tests/test_schema.py checks that it is Alembic's head."""
    return max(path.name.split("_", 1)[0] for path in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py"))


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to `revision` (default: the newest), then create the coming
    months' partitions where the tables are partitioned (PostgreSQL, see kiln.partitions)."""
    from alembic import command

    from kiln.db import utcnow
    from kiln.partitions import ensure_partitions

    with engine.begin() as connection:
        command.upgrade(_config(connection), revision)
        ensure_partitions(connection, utcnow())


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's filter: month partitions (attached or detached for archiving) are no model's table."""
    from kiln.partitions import is_partition_name

    return not (type_ == "table" and name is not None and is_partition_name(name))


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to `revision` (`base` removes every table)."""
    from alembic import command

    with engine.begin() as connection:
        command.downgrade(_config(connection), revision)


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands against this Kiln's migrations."""

    current: str | None
    head: str
    known: bool

    @property
    def is_current(self) -> bool:
        """True when the database is at this Kiln's newest revision."""
        return self.current == self.head

    def problem(self) -> str | None:
        """A one-line explanation with the fix, or None when the schema is current."""
        if self.current is None:
            return "the database has no Kiln schema yet: run `kiln migrate`"
        if not self.known:
            return (
                f"the database schema ({self.current}) is newer than this Kiln knows (head {self.head}): "
                "upgrade Kiln, or restore a backup made by this version"
            )
        if not self.is_current:
            return f"the database schema is at {self.current}, this Kiln needs {self.head}: run `kiln migrate`"
        return None


def schema_status(engine: Engine) -> SchemaStatus:
    """Compare the database's revision with this Kiln's migrations."""
    script = _scripts()
    current = current_revision(engine)
    known = current is None or any(rev.revision == current for rev in script.walk_revisions())
    return SchemaStatus(current=current, head=script.get_current_head(), known=known)


def migrate_to(engine: Engine, target: str = "head") -> str | None:
    """Move the schema up or down to `target` (`head`, `base` or a revision); returns where it ends."""
    status = schema_status(engine)
    if not status.known:
        raise SchemaError(status.problem())
    from alembic.util import CommandError

    script = _scripts()
    try:
        older = target == "base" or (
            status.current is not None
            and target != status.current
            and target in {rev.revision for rev in script.iterate_revisions(status.current, "base")}
        )
        if older:
            downgrade(engine, target)
        else:
            upgrade(engine, target)
    except CommandError as exc:
        raise SchemaError(f"cannot migrate to {target!r}: {exc}") from None
    return current_revision(engine)


def _at_newest_migration(engine: Engine) -> bool:
    """True when the database's recorded revision is the newest migration file's (no Alembic)."""
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except DBAPIError:  # no alembic_version table: never migrated (schema_status says so)
        return False
    return versions == [newest_migration_file_revision()]


def ensure_current(engine: Engine) -> None:
    """Raise SchemaError unless the database is at this Kiln's newest revision."""
    if _at_newest_migration(engine):
        return
    problem = schema_status(engine).problem()
    if problem:
        raise SchemaError(problem)
