"""`kiln backup` / `kiln restore`: database snapshot, settings and manifest in one `.tar.gz`.

Members: `manifest.json` (format, Kiln version, schema revision, database kind, SHA-256 of every
other member, `secret_key_check`: an HMAC telling whether a key is the backed-up one without
revealing it); `database/kiln.sqlite` (SQLite's online backup API: consistent while Kiln
writes) or `database/kiln.pgdump` (`pg_dump --format=custom`: one snapshot); `settings/NAME`
(the `KILN_CONFIG` file without its secret key, database password masked) and
`settings/effective.json`; with a passphrase only, `secret.key.enc` (scrypt + Fernet).

The secret key is never stored in clear; BMC passwords are encrypted with it, so a restore
needs the target's `KILN_SECRET_KEY` to be the same key, or the passphrase. A restore checks
everything (archive, checksums, schema revision, database kind, key, the dump itself) before
it touches the target, refuses a non-empty one unless forced (one holding tables that are not
Kiln's always), and replaces it in one transaction.

The archive format lives in `kiln.backup_archive`, the database snapshots in `kiln.backup_dump`;
this module puts them together.
"""

from __future__ import annotations

import hmac
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from kiln import __version__
from kiln.backup_archive import (
    EFFECTIVE_SETTINGS,
    KEY_MEMBER,
    BackupError,
    Manifest,
    database_member,
    decrypt_secret_key,
    effective_settings,
    encrypt_secret_key,
    key_check,
    read_backup,
    settings_file_without_secret,
    sha256_of,
    write_archive,
    write_private,
)
from kiln.backup_dump import (
    check_sqlite_dump,
    database_kind,
    pg_dump,
    pg_replace,
    pg_script,
    revision_in_dump,
    sqlite_copy,
    sqlite_path,
)
from kiln.db import create_db_engine
from kiln.partitions import is_partition_name
from kiln.schema import MIGRATIONS_DIR, head_revision, schema_status, target_metadata
from kiln.settings import CONFIG_ENV, SECRET_KEY_FILE, ConfigError, Settings, resolve_secret_key

__all__ = ["BackupError", "Manifest", "RestoreReport", "create_backup", "read_backup", "restore_backup"]


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did: the restored schema, this Kiln's head, files it wrote."""

    schema_revision: str
    head_revision: str
    database: str
    settings_file: Path | None
    secret_key_file: Path | None

    @property
    def needs_migrate(self) -> bool:
        """True when the restored schema is older than this Kiln's: run `kiln migrate`."""
        return self.schema_revision != self.head_revision


def create_backup(settings: Settings, out: Path, *, passphrase: str | None = None) -> Manifest:
    """Write a backup of the configured database and settings to `out` (atomically, mode 0600)."""
    url = settings.resolved_database_url
    kind = database_kind(url)
    engine = create_db_engine(url)
    status = schema_status(engine)
    engine.dispose()
    if status.current is None:
        raise BackupError("the database has no Kiln schema: there is nothing to back up")
    if not status.known:
        raise BackupError(status.problem() or "unknown schema")
    secret_key = _configured_key(settings)
    if passphrase is not None and secret_key is None:
        raise BackupError("no secret key is configured, so none can be put in the backup")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".kiln-backup-") as work:
        dump = Path(work) / "database.dump"
        if kind == "sqlite":
            revision = sqlite_copy(sqlite_path(url), dump, "DELETE")  # one file, no -wal beside it
        else:
            revision = revision_in_dump(pg_dump(url, dump))
        files = {database_member(kind): dump}
        extras: dict[str, bytes] = {EFFECTIVE_SETTINGS: effective_settings(settings)}
        config_path = os.environ.get(CONFIG_ENV)
        settings_name = None
        if config_path and Path(config_path).is_file():
            settings_name = f"settings/{Path(config_path).name}"
            extras[settings_name] = settings_file_without_secret(Path(config_path))
        if passphrase is not None and secret_key is not None:
            extras[KEY_MEMBER] = encrypt_secret_key(secret_key, passphrase)
        files.update({name: write_private(Path(work) / name.replace("/", "_"), content)
                      for name, content in extras.items()})
        manifest = Manifest(
            kiln_version=__version__, schema_revision=revision, database=kind,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            members={name: sha256_of(path) for name, path in files.items()},
            secret_key_check=key_check(secret_key) if secret_key else None,
            secret_key="encrypted" if KEY_MEMBER in files else "not included",
            settings_file=settings_name,
        )
        write_archive(out, manifest, files, Path(work))
    return manifest


def _known_revisions() -> set[str]:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return {rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()}


def _target_key(settings: Settings, manifest: Manifest, paths: dict[str, Path],
                passphrase: str | None) -> tuple[str | None, bool]:
    """The secret key the restored Kiln will use and whether it must be written to the data dir."""
    configured = _configured_key(settings)
    if passphrase is not None and KEY_MEMBER not in paths:
        raise BackupError("this backup does not carry the secret key (it was made without --passphrase-file)")
    hint = " (or unset it and pass --passphrase-file)" if KEY_MEMBER in paths else ""
    if manifest.secret_key_check is None or (
            configured is not None and hmac.compare_digest(key_check(configured), manifest.secret_key_check)):
        return configured, False
    if configured is not None:
        raise BackupError("the configured secret key is not the backed-up Kiln's key: its BMC passwords could "
                          f"not be decrypted. Set KILN_SECRET_KEY to that key{hint}")
    if passphrase is None:
        raise BackupError(f"no secret key is configured: set KILN_SECRET_KEY to the backed-up Kiln's key{hint}")
    return decrypt_secret_key(paths[KEY_MEMBER].read_bytes(), passphrase), True


def _kiln_tables() -> set[str]:
    """Every table name Kiln's schema has (its models' tables and alembic's version table)."""
    return set(target_metadata().tables) | {"alembic_version"}


def _some(names: list[str], shown: int = 5) -> str:
    """`a, b, c` or `a, b, c, d, e and 3 more`."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _configured_key(settings: Settings) -> str | None:
    try:
        return resolve_secret_key(settings)
    except ConfigError:
        return None


def restore_backup(settings: Settings, archive: Path, *, force: bool = False,
                   passphrase: str | None = None) -> RestoreReport:
    """Restore a backup into the configured database (see the module docstring for the checks)."""
    url = settings.resolved_database_url
    kind = database_kind(url)
    with tempfile.TemporaryDirectory(prefix="kiln-restore-") as work:
        manifest, paths = read_backup(archive, Path(work))
        if manifest.schema_revision not in _known_revisions():
            raise BackupError(f"the backup's schema ({manifest.schema_revision}) is newer than this Kiln knows "
                              f"(head {head_revision()}): restore it with the Kiln version that made it "
                              f"({manifest.kiln_version}) or a newer one")
        if manifest.database != kind:
            raise BackupError(f"the backup holds a {manifest.database} database but the target is {kind}: "
                              "restore into the same kind of database")
        dump = paths[database_member(kind)]
        if kind == "sqlite":
            check_sqlite_dump(dump, manifest.schema_revision)
        else:
            script = pg_script(dump)  # decompresses everything: a damaged dump fails here
        key, write_key = _target_key(settings, manifest, paths, passphrase)
        engine = create_db_engine(url)
        try:
            tables = sorted(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        foreign = sorted(t for t in set(tables) - _kiln_tables() if not is_partition_name(t))  # partitions are Kiln's
        if foreign:  # even with --force: a restore replaces the whole database (PostgreSQL: its public schema)
            raise BackupError(f"the target database holds tables that are not Kiln's ({_some(foreign)}): a restore "
                              "replaces the whole database, so restore into a database of Kiln's own")
        if tables and not force:
            raise BackupError(f"the target database is not empty ({len(tables)} tables, e.g. {tables[0]}): "
                              "restore into an empty database, or pass --force to replace its contents")
        if kind == "sqlite":
            sqlite_copy(dump, sqlite_path(url), "WAL")
        else:
            pg_replace(url, script)
        settings_file = write_private(settings.data_dir / "restored" / Path(manifest.settings_file).name,
                                      paths[manifest.settings_file].read_bytes()) if manifest.settings_file else None
        key_file = write_private(settings.data_dir / SECRET_KEY_FILE, f"{key}\n".encode()) if write_key and key else None
    return RestoreReport(manifest.schema_revision, head_revision(), kind, settings_file, key_file)
