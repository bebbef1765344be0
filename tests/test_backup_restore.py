"""`kiln backup` / `kiln restore` on SQLite and on a real PostgreSQL (pg_dump/psql), and
`kiln migrate` up and down from every released schema revision."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import secrets
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, MetaData, select, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from fleet.models import Node
from kiln.backup import BackupError, create_backup, restore_backup
from kiln.db import create_db_engine
from kiln.schema import MIGRATIONS_DIR, head_revision, migrate_to, schema_status
from kiln.security import SecretBox
from kiln.settings import Settings
from kiln.tenants import TenantCreate, create_tenant
from kiln.auth import Principal
from tests.cli_helpers import base_env, run
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World
from tests.fleet_helpers import make_node_row

OTHER_KEY = "another-secret-key-" + "y" * 32
BMC_PASSWORD = "bmc-pa55word!"


@pytest.fixture
def new_database(database_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[callable]:
    """A factory of fresh, empty databases of the same kind as the test database."""
    created: list[str] = []
    admin = request.getfixturevalue("postgres_server") if database_url.startswith("postgresql") else None

    def make() -> str:
        if admin is None:
            return f"sqlite:///{tmp_path / f'target-{secrets.token_hex(3)}.db'}"
        name = f"kiln_restore_{secrets.token_hex(4)}"
        dsn = make_url(admin).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return make_url(admin).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)

    yield make
    if admin is not None:
        dsn = make_url(admin).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, autocommit=True) as connection:
            for name in created:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def populated(engine: Engine, world: World) -> Engine:
    """The test database with tenants, users, tokens and a node whose BMC password is encrypted."""
    make_node_row(world, gpus=2, name="gpu-001", bmc_username="admin",
                  bmc_password_encrypted=SecretBox(TEST_SECRET_KEY).encrypt(BMC_PASSWORD))
    return engine


def url_of(engine: Engine) -> str:
    """The engine's URL with its password, for settings and subprocesses."""
    return engine.url.render_as_string(hide_password=False)


def settings_for(url: str, data_dir: Path, key: str | None = TEST_SECRET_KEY) -> Settings:
    """Settings of a Kiln on `url` (no config file)."""
    return Settings(data_dir=data_dir, database_url=url, secret_key=key)


def contents(url: str) -> dict[str, list[tuple]]:
    """Every row of every table (alembic_version included), sorted, by table."""
    engine = create_db_engine(url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as connection:
            return {name: sorted(map(tuple, connection.execute(select(table))), key=repr)
                    for name, table in sorted(metadata.tables.items())}
    finally:
        engine.dispose()


def test_round_trip_through_the_cli(populated: Engine, new_database: callable, tmp_path: Path) -> None:
    source = url_of(populated)
    archive = tmp_path / "kiln-backup.tar.gz"
    made = run(base_env(tmp_path, KILN_DATABASE_URL=source, KILN_SECRET_KEY=TEST_SECRET_KEY),
               "backup", "--out", str(archive))
    assert made.returncode == 0, made.stderr
    assert f"at schema {head_revision()}" in made.stdout and "secret key not included" in made.stdout
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert TEST_SECRET_KEY.encode() not in gzip.decompress(archive.read_bytes())  # never in clear

    target = new_database()
    restored = run(base_env(tmp_path, KILN_DATABASE_URL=target, KILN_SECRET_KEY=TEST_SECRET_KEY),
                   "restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    assert contents(target) == contents(source)
    assert sum(len(rows) for rows in contents(target).values()) > 10

    engine = create_db_engine(target)
    try:
        assert schema_status(engine).is_current
        with Session(engine) as session:
            node = session.exec(select(Node).where(Node.name == "gpu-001")).scalars().one()
            assert SecretBox(TEST_SECRET_KEY).decrypt(node.bmc_password_encrypted) == BMC_PASSWORD
            # sequences came along: a new row does not collide with restored ids
            create_tenant(session, Principal.system("test"), TenantCreate(slug="after-restore", name="After"))
            session.commit()
    finally:
        engine.dispose()


def backup_and_migrated_target(populated: Engine, new_database: callable, tmp_path: Path) -> tuple[Path, str, Engine]:
    """A backup of `populated`, and a new database migrated to head with an engine to fill it (dispose it)."""
    archive = tmp_path / "b.tar.gz"
    create_backup(settings_for(url_of(populated), tmp_path), archive)
    target = new_database()
    engine = create_db_engine(target)
    migrate_to(engine)
    return archive, target, engine


def test_non_empty_target_is_refused_unless_forced(populated: Engine, new_database: callable,
                                                   tmp_path: Path) -> None:
    archive, target, engine = backup_and_migrated_target(populated, new_database, tmp_path)
    with Session(engine) as session:
        create_tenant(session, Principal.system("test"), TenantCreate(slug="precious", name="Precious"))
        session.commit()
    engine.dispose()
    before = contents(target)

    env = base_env(tmp_path, KILN_DATABASE_URL=target, KILN_SECRET_KEY=TEST_SECRET_KEY)
    refused = run(env, "restore", str(archive))
    assert refused.returncode == 1
    assert refused.stderr.startswith("kiln: error: the target database is not empty")
    assert "--force" in refused.stderr and refused.stderr.count("\n") == 1
    assert contents(target) == before

    forced = run(env, "restore", str(archive), "--force")
    assert forced.returncode == 0, forced.stderr
    after = contents(target)
    assert after == contents(url_of(populated))
    assert not any("precious" in repr(row) for row in after["tenant"])


def test_a_database_shared_with_other_tables_is_refused_even_when_forced(populated: Engine, new_database: callable,
                                                                        tmp_path: Path) -> None:
    archive, target, engine = backup_and_migrated_target(populated, new_database, tmp_path)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount TEXT)"))
        connection.execute(text("INSERT INTO invoices VALUES (1, '12.50')"))
    engine.dispose()
    before = contents(target)
    env = base_env(tmp_path, KILN_DATABASE_URL=target, KILN_SECRET_KEY=TEST_SECRET_KEY)
    refused = run(env, "restore", str(archive), "--force")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("kiln: error: the target database holds tables that are not Kiln's (invoices)")
    assert contents(target) == before and before["invoices"] == [(1, "12.50")]


def rewrite_archive(archive: Path, out: Path, change: callable) -> Path:
    """Copy a backup, letting `change(name, bytes)` alter (or drop, with None) each member."""
    with tarfile.open(archive, "r:gz") as source, tarfile.open(out, "w:gz") as target:
        for member in source.getmembers():
            data = change(member.name, source.extractfile(member).read())
            if data is not None:
                info = tarfile.TarInfo(member.name)
                info.size = len(data)
                target.addfile(info, io.BytesIO(data))
    return out


def with_manifest(**fields: object) -> callable:
    """A `rewrite_archive` change that overrides manifest fields."""
    def change(name: str, data: bytes) -> bytes:
        return json.dumps({**json.loads(data), **fields}).encode() if name == "manifest.json" else data
    return change


def damaged_with_a_valid_checksum(archive: Path, out: Path, database_member: str) -> Path:
    """A backup whose database dump is damaged and whose manifest lists the
    damaged file's checksum: only the dump's own check can catch it."""
    with tarfile.open(archive, "r:gz") as tar:
        dump = bytearray(tar.extractfile(database_member).read())
    # SQLite: the schema table's b-tree page header (right after the 100-byte file header), which
    # every open reads — a page in the middle may be free space that no check looks at;
    # PostgreSQL: inside the first table's CREATE statement, which a restore runs — the middle of
    # the dump can be a statement only `pg_restore --clean` uses (with migration 0028 it was a DROP
    # CONSTRAINT's text: damaged, and harmless)
    start = 100 if database_member.endswith(".sqlite") else dump.index(b"CREATE TABLE public.") + 20
    dump[start:start + 64] = os.urandom(64)
    manifest_fix = with_manifest(members={**json.loads(_member(archive, "manifest.json"))["members"],
                                          database_member: hashlib.sha256(dump).hexdigest()})
    return rewrite_archive(archive, out, lambda n, d: bytes(dump) if n == database_member else manifest_fix(n, d))


def _member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive, "r:gz") as tar:
        return tar.extractfile(name).read()


def test_bad_archives_are_refused_without_touching_the_database(populated: Engine, new_database: callable,
                                                               tmp_path: Path) -> None:
    good = tmp_path / "good.tar.gz"
    create_backup(settings_for(url_of(populated), tmp_path), good)
    target = new_database()
    engine = create_db_engine(target)
    migrate_to(engine)
    engine.dispose()
    before = contents(target)
    database_member = "database/kiln.sqlite" if populated.dialect.name == "sqlite" else "database/kiln.pgdump"

    def flip_a_byte(name: str, data: bytes) -> bytes:
        return data if name != database_member else data[:100] + bytes([data[100] ^ 1]) + data[101:]

    foreign = tmp_path / "foreign.tar.gz"
    with tarfile.open(foreign, "w:gz") as tar:
        tar.add(__file__, arcname="notes.txt")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(4096))
    cases = {
        foreign: "is not a Kiln backup (no manifest.json)",
        truncated: "is not a readable Kiln backup",
        garbage: "is not a readable Kiln backup",
        rewrite_archive(good, tmp_path / "corrupt.tar.gz", flip_a_byte): f"is corrupt: {database_member} does not match",
        rewrite_archive(good, tmp_path / "missing.tar.gz", lambda n, d: None if n == database_member else d):
            f"is incomplete: {database_member} is missing",
        rewrite_archive(good, tmp_path / "future.tar.gz", with_manifest(schema_revision="9999_from_the_future")):
            "the backup's schema (9999_from_the_future) is newer than this Kiln knows",
        rewrite_archive(good, tmp_path / "format.tar.gz", with_manifest(format="tarball")): "is not a Kiln backup",
        rewrite_archive(good, tmp_path / "v2.tar.gz", with_manifest(format_version=2)): "has backup format 2",
        tmp_path / "absent.tar.gz": "no such backup file",
        damaged_with_a_valid_checksum(good, tmp_path / "damaged.tar.gz", database_member): "is damaged (",
    }
    for archive, message in cases.items():
        with pytest.raises(BackupError) as refused:
            restore_backup(settings_for(target, tmp_path), archive, force=True)
        assert message in str(refused.value), archive.name
        assert contents(target) == before, archive.name


def test_a_newer_schema_is_refused_through_the_cli(populated: Engine, new_database: callable, tmp_path: Path) -> None:
    good = tmp_path / "good.tar.gz"
    create_backup(settings_for(url_of(populated), tmp_path), good)
    future = rewrite_archive(good, tmp_path / "future.tar.gz", with_manifest(schema_revision="0099_next"))
    target = new_database()
    result = run(base_env(tmp_path, KILN_DATABASE_URL=target, KILN_SECRET_KEY=TEST_SECRET_KEY), "restore", str(future))
    assert result.returncode == 1
    assert result.stderr.startswith("kiln: error: the backup's schema (0099_next) is newer than this Kiln knows")
    assert contents(target) == {}


def test_secret_key_must_match_or_come_with_a_passphrase(populated: Engine, new_database: callable,
                                                        tmp_path: Path) -> None:
    plain, carrying = tmp_path / "plain.tar.gz", tmp_path / "carrying.tar.gz"
    create_backup(settings_for(url_of(populated), tmp_path), plain)
    create_backup(settings_for(url_of(populated), tmp_path), carrying, passphrase="correct horse battery")
    target = new_database()
    with pytest.raises(BackupError, match="not the backed-up Kiln's key"):
        restore_backup(settings_for(target, tmp_path, key=OTHER_KEY), plain)
    fresh_dir = tmp_path / "fresh"
    with pytest.raises(BackupError, match="no secret key is configured"):
        restore_backup(settings_for(target, fresh_dir, key=None), plain)
    with pytest.raises(BackupError, match="wrong backup passphrase"):
        restore_backup(settings_for(target, fresh_dir, key=None), carrying, passphrase="wrong passphrase!!")
    assert contents(target) == {}
    report = restore_backup(settings_for(target, fresh_dir, key=None), carrying, passphrase="correct horse battery")
    assert report.secret_key_file == fresh_dir / "secret.key"
    assert report.secret_key_file.read_text().strip() == TEST_SECRET_KEY
    assert stat.S_IMODE(report.secret_key_file.stat().st_mode) == 0o600
    assert contents(target) == contents(url_of(populated))


def test_settings_file_travels_without_the_secret_key(populated: Engine, new_database: callable, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "kiln.toml"
    config.write_text(f'log_level = "DEBUG"\nsecret_key = "{TEST_SECRET_KEY}"\nsync_interval = 30\n')
    monkeypatch.setenv("KILN_CONFIG", str(config))
    archive = tmp_path / "with-settings.tar.gz"
    manifest = create_backup(settings_for(url_of(populated), tmp_path), archive)
    assert manifest.settings_file == "settings/kiln.toml"
    with tarfile.open(archive) as tar:
        saved = tar.extractfile("settings/kiln.toml").read().decode()
        effective = json.loads(tar.extractfile("settings/effective.json").read())
    assert saved == 'log_level = "DEBUG"\nsync_interval = 30\n'
    assert "secret_key" not in effective and effective["log_level"] == "DEBUG"  # read from the file
    monkeypatch.delenv("KILN_CONFIG")
    target_dir = tmp_path / "target"
    report = restore_backup(settings_for(new_database(), target_dir), archive)
    assert report.settings_file == target_dir / "restored" / "kiln.toml"
    assert report.settings_file.read_text() == saved


def test_restore_into_another_kind_of_database_is_refused(populated: Engine, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    create_backup(settings_for(url_of(populated), tmp_path), archive)
    other = "sqlite:///" + str(tmp_path / "other.db") if populated.dialect.name != "sqlite" else (
        "postgresql+psycopg://kiln@127.0.0.1:1/none")
    with pytest.raises(BackupError, match="restore into the same kind of database"):
        restore_backup(settings_for(other, tmp_path), archive)


def test_an_unmigrated_database_cannot_be_backed_up(new_database: callable, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no Kiln schema"):
        create_backup(settings_for(new_database(), tmp_path), tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


def released_revisions() -> list[str]:
    """Every revision in the migration chain, oldest first."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return [rev.revision for rev in reversed(list(ScriptDirectory.from_config(config).walk_revisions()))]


def test_every_released_revision_migrates_up_and_down(new_database: callable) -> None:
    """Walking the chain from an empty database, each released revision is reached from the one
    before it, goes back down to it and up again, and asks for `kiln migrate` until head, which is
    current: a database at any revision reaches head through these same steps. Then the whole
    chain down to base and up to head, each in one go."""
    engine = create_db_engine(new_database())
    head = head_revision()
    try:
        previous = None
        for revision in released_revisions():
            assert migrate_to(engine, revision) == revision, f"up from {previous}"
            assert migrate_to(engine, previous or "base") == previous, f"down from {revision}"
            assert migrate_to(engine, revision) == revision, f"up again from {previous}"
            assert schema_status(engine).problem() == (
                f"the database schema is at {revision}, this Kiln needs {head}: run `kiln migrate`"
                if revision != head else None)
            previous = revision
        assert previous == head and schema_status(engine).is_current
        assert migrate_to(engine, "base") is None
        assert migrate_to(engine) == head and schema_status(engine).is_current
    finally:
        engine.dispose()


def test_an_older_backup_is_restored_and_asks_for_migrate(new_database: callable, tmp_path: Path) -> None:
    oldest = released_revisions()[0]
    source = new_database()
    engine = create_db_engine(source)
    migrate_to(engine, oldest)
    with engine.begin() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == oldest
    engine.dispose()
    archive = tmp_path / "old.tar.gz"
    assert create_backup(settings_for(source, tmp_path), archive).schema_revision == oldest
    target = new_database()
    result = run(base_env(tmp_path, KILN_DATABASE_URL=target, KILN_SECRET_KEY=TEST_SECRET_KEY), "restore", str(archive))
    assert result.returncode == 0, result.stderr
    assert "run `kiln migrate`" in result.stdout
    assert run(base_env(tmp_path, KILN_DATABASE_URL=target), "migrate").returncode == 0
