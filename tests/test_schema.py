"""Migrations own the schema: they match the models, go up and down, and start-up checks them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from kiln.db import create_db_engine
from kiln.schema import (
    MIGRATIONS_DIR,
    MODEL_MODULES,
    SchemaError,
    ensure_current,
    head_revision,
    include_name,
    migrate_to,
    newest_migration_file_revision,
    schema_status,
    target_metadata,
)


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": include_name})
        differences = compare_metadata(context, target_metadata())
    assert differences == []


def test_up_down_up_from_empty(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'updown.db'}")
    assert schema_status(engine).problem() == "the database has no Kiln schema yet: run `kiln migrate`"
    with pytest.raises(SchemaError, match="kiln migrate"):
        ensure_current(engine)
    assert migrate_to(engine, "head") == head_revision()
    ensure_current(engine)
    assert {"tenant", "user_account", "api_token", "audit_event", "membership"} <= set(inspect(engine).get_table_names())
    assert migrate_to(engine, "base") is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert migrate_to(engine, "head") == head_revision()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'newer.db'}")
    migrate_to(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(SchemaError, match="newer than this Kiln"):
        ensure_current(engine)
    with pytest.raises(SchemaError, match="newer than this Kiln"):
        migrate_to(engine)


def test_migration_files_are_named_by_their_revision() -> None:
    """ensure_current (every CLI command) reads the head from the file names, without Alembic."""
    from alembic.script import ScriptDirectory

    revisions = list(ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions())
    assert len(revisions) > 10
    assert [Path(r.path).name.split("_", 1)[0] for r in revisions] == [r.revision for r in revisions]
    assert newest_migration_file_revision() == head_revision()


def test_an_older_schema_is_refused_with_the_fix(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'older.db'}")
    older = migrate_to(engine, f"{int(head_revision()) - 1:04d}")
    with pytest.raises(SchemaError, match=f"the database schema is at {older}, this Kiln needs {head_revision()}: run `kiln migrate`"):
        ensure_current(engine)


def test_unknown_target_revision_is_a_clear_error(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'bad-target.db'}")
    with pytest.raises(SchemaError, match="cannot migrate to 'nope'"):
        migrate_to(engine, "nope")


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'sub' / 'wal.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_downgrades_that_touch_nodes_keep_what_refers_to_them(tmp_path: Path) -> None:
    """Batch mode recreates a SQLite table, and dropping `node` fires the ON DELETE CASCADE of
    GPUs, tags and leases: migrations that drop a node column must drop it in place."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'cascade.db'}")
    migrate_to(engine, "head")
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO node (name, provisioner, hardware_type, bmc_driver, bmc_address, facts, provision_state, "
            "maintenance, created_at, updated_at, zone, ipmi_privilege) VALUES ('n1', 'fake', 'ipmi', 'ipmi', "
            "'ipmi://10.0.0.1', '{}', 'available', 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00', 'DE', 'admin')"))
        connection.execute(text("INSERT INTO gpu (node_id, \"index\", model, vendor) SELECT id, 0, 'H100', 'nvidia' FROM node"))
        connection.execute(text("INSERT INTO node_tag (node_id, tag) SELECT id, 'train' FROM node"))
    migrate_to(engine, "0008")
    with engine.connect() as connection:
        assert [connection.execute(text(f"SELECT count(*) FROM {table}")).scalar() for table in ("node", "gpu", "node_tag")] == [1, 1, 1]
    assert migrate_to(engine, "head") == head_revision()


@pytest.mark.parametrize("module", MODEL_MODULES)
def test_each_model_module_loads_the_tables_its_foreign_keys_name(module: str) -> None:
    """Short commands import few model modules; a flush sorts tables by their foreign keys, which
    fails on a table nobody imported. So each module, imported alone, brings its keys' targets."""
    check = (f"import importlib, sqlmodel; importlib.import_module({module!r}); "
             "[fk.column for table in sqlmodel.SQLModel.metadata.tables.values() for fk in table.foreign_keys]")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]
