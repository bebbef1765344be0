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
it touches the target, refuses a non-empty one unless forced, and replaces it in one transaction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from kiln import __version__
from kiln.db import create_db_engine
from kiln.errors import KilnError
from kiln.schema import MIGRATIONS_DIR, head_revision, schema_status
from kiln.settings import CONFIG_ENV, SECRET_KEY_FILE, ConfigError, Settings, resolve_secret_key

FORMAT, FORMAT_VERSION, MANIFEST = "kiln-backup", 1, "manifest.json"
SQLITE_MEMBER, PG_MEMBER = "database/kiln.sqlite", "database/kiln.pgdump"
EFFECTIVE_SETTINGS, KEY_MEMBER = "settings/effective.json", "secret.key.enc"
KEY_CHECK_MESSAGE, SCRYPT_N, SCRYPT_R, SCRYPT_P = b"kiln backup secret key check v1", 2**15, 8, 1


class BackupError(KilnError):
    """A backup or restore that was refused; the message says why and what to do."""

    status, title = 400, "Backup refused"


@dataclass(frozen=True)
class Manifest:
    """What a backup holds (`manifest.json`)."""

    kiln_version: str
    schema_revision: str
    database: str  # sqlite | postgresql
    created_at: str
    members: dict[str, str]  # archive name -> SHA-256
    secret_key_check: str | None
    secret_key: str  # "encrypted" | "not included"
    settings_file: str | None

    def to_json(self) -> str:
        """The manifest as written into the archive."""
        return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__}, indent=2)


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


def database_kind(url: str) -> str:
    """`sqlite` or `postgresql` for a database URL; BackupError for anything else."""
    backend = make_url(url).get_backend_name()
    if backend not in {"sqlite", "postgresql"}:
        raise BackupError(f"cannot back up a {backend} database: Kiln supports SQLite and PostgreSQL")
    return backend


def key_check(secret_key: str) -> str:
    """An HMAC of a fixed message under the key: equal checks mean equal keys; reveals nothing."""
    return hmac.new(secret_key.encode(), KEY_CHECK_MESSAGE, hashlib.sha256).hexdigest()


def _passphrase_fernet(passphrase: str, salt: bytes) -> Fernet:
    if len(passphrase) < 12:
        raise BackupError("the backup passphrase must be at least 12 characters")
    key = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt_secret_key(secret_key: str, passphrase: str) -> bytes:
    """The `secret.key.enc` member: the key encrypted under a passphrase-derived key."""
    salt = os.urandom(16)
    token = _passphrase_fernet(passphrase, salt).encrypt(secret_key.encode())
    return json.dumps({"kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                       "salt": base64.b64encode(salt).decode(), "token": token.decode()}).encode()


def decrypt_secret_key(blob: bytes, passphrase: str) -> str:
    """The secret key from a `secret.key.enc` member; BackupError for a wrong passphrase."""
    data = json.loads(blob)
    try:
        return _passphrase_fernet(passphrase, base64.b64decode(data["salt"])).decrypt(data["token"].encode()).decode()
    except InvalidToken:
        raise BackupError("wrong backup passphrase: the secret key in the backup cannot be decrypted") from None


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("cannot back up or restore an in-memory SQLite database")
    return Path(database)


def sqlite_copy(source: Path, target: Path, journal_mode: str) -> str:
    """Copy a SQLite database with the online backup API (consistent while Kiln writes; replaces
    the target's contents in one step) and return the schema revision of the copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(f"file:{source}?mode=ro", uri=True), sqlite3.connect(target, timeout=30)
    try:
        src.backup(dst)
        dst.execute(f"PRAGMA journal_mode={journal_mode}")
        row = dst.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        src.close()
        dst.close()
    return row[0] if row else ""


def settings_file_without_secret(path: Path) -> bytes:
    """The config file's text without its `secret_key` entry and with URL passwords masked
    (config files are flat: one setting a line)."""
    lines = path.read_text().splitlines(keepends=True)
    kept = "".join(line for line in lines if not re.match(r"\s*secret_key\s*[=:]", line))
    return re.sub(r"(://[^:/@\s\"']+:)[^@\s\"']+@", r"\1***@", kept).encode()


def effective_settings(settings: Settings) -> bytes:
    """Every setting as JSON, without the secret key and with the database password masked."""
    values = settings.model_dump(mode="json", exclude={"secret_key"})
    if settings.database_url:
        values["database_url"] = make_url(settings.database_url).render_as_string(hide_password=True)
    return json.dumps(values, indent=2, sort_keys=True).encode()


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
            revision = sqlite_copy(_sqlite_path(url), dump, "DELETE")  # one file, no -wal beside it
        else:
            revision = revision_in_dump(pg_dump(url, dump))
        files = {SQLITE_MEMBER if kind == "sqlite" else PG_MEMBER: dump}
        extras: dict[str, bytes] = {EFFECTIVE_SETTINGS: effective_settings(settings)}
        config_path = os.environ.get(CONFIG_ENV)
        settings_name = None
        if config_path and Path(config_path).is_file():
            settings_name = f"settings/{Path(config_path).name}"
            extras[settings_name] = settings_file_without_secret(Path(config_path))
        if passphrase is not None and secret_key is not None:
            extras[KEY_MEMBER] = encrypt_secret_key(secret_key, passphrase)
        files.update({name: _write_private(Path(work) / name.replace("/", "_"), content)
                      for name, content in extras.items()})
        manifest = Manifest(
            kiln_version=__version__, schema_revision=revision, database=kind,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            members={name: _sha256(path) for name, path in files.items()},
            secret_key_check=key_check(secret_key) if secret_key else None,
            secret_key="encrypted" if KEY_MEMBER in files else "not included",
            settings_file=settings_name,
        )
        files = {MANIFEST: _write_private(Path(work) / MANIFEST, manifest.to_json().encode()), **files}
        partial = _write_private(Path(work) / "backup.tar.gz", b"")
        with tarfile.open(partial, mode="w:gz") as tar:
            for name, path in files.items():
                tar.add(path, arcname=name, recursive=False)
        os.replace(partial, out)
    return manifest


def read_backup(archive: Path, workdir: Path) -> tuple[Manifest, dict[str, Path]]:
    """Open and verify a backup: a Kiln manifest, every listed member present with its checksum.
    Members are extracted (by their listed names only) into `workdir`."""
    name = str(archive)
    if not archive.is_file():
        raise BackupError(f"{name}: no such backup file")
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            if MANIFEST not in tar.getnames():
                raise BackupError(f"{name} is not a Kiln backup (no {MANIFEST})")
            data = json.loads(tar.extractfile(MANIFEST).read())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise BackupError(f"{name} is not a Kiln backup (its manifest is not a {FORMAT} manifest)")
            if data.get("format_version") != FORMAT_VERSION:
                raise BackupError(f"{name} has backup format {data.get('format_version')!r}; "
                                  f"this Kiln reads format {FORMAT_VERSION}")
            data.pop("format"), data.pop("format_version")
            manifest = Manifest(**data)
            paths = {}
            for member_name, checksum in manifest.members.items():
                if member_name not in tar.getnames():
                    raise BackupError(f"{name} is incomplete: {member_name} is missing")
                path = workdir / member_name.replace("/", "_")
                with path.open("wb") as handle:
                    shutil.copyfileobj(tar.extractfile(member_name), handle, 1 << 20)
                if _sha256(path) != checksum:
                    raise BackupError(f"{name} is corrupt: {member_name} does not match its checksum")
                paths[member_name] = path
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BackupError(f"{name} is not a readable Kiln backup ({type(exc).__name__}: {exc})") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BackupError(f"{name} is not a Kiln backup (bad manifest: {exc})") from None
    database_member = SQLITE_MEMBER if manifest.database == "sqlite" else PG_MEMBER
    if database_member not in paths:
        raise BackupError(f"{name} is incomplete: it holds no {manifest.database} database")
    return manifest, paths


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
        dump = paths[SQLITE_MEMBER if kind == "sqlite" else PG_MEMBER]
        if kind == "sqlite":
            _check_sqlite_dump(dump, manifest.schema_revision)
        else:
            script = pg_script(dump)  # decompresses everything: a damaged dump fails here
        key, write_key = _target_key(settings, manifest, paths, passphrase)
        engine = create_db_engine(url)
        try:
            tables = sorted(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        if tables and not force:
            raise BackupError(f"the target database is not empty ({len(tables)} tables, e.g. {tables[0]}): "
                              "restore into an empty database, or pass --force to replace its contents")
        if kind == "sqlite":
            sqlite_copy(dump, _sqlite_path(url), "WAL")
        else:
            pg_replace(url, script)
        settings_file = _write_private(settings.data_dir / "restored" / Path(manifest.settings_file).name,
                                       paths[manifest.settings_file].read_bytes()) if manifest.settings_file else None
        key_file = _write_private(settings.data_dir / SECRET_KEY_FILE, f"{key}\n".encode()) if write_key and key else None
    return RestoreReport(manifest.schema_revision, head_revision(), kind, settings_file, key_file)


def _check_sqlite_dump(dump: Path, revision: str) -> None:
    connection = sqlite3.connect(f"file:{dump}?mode=ro", uri=True)
    try:
        ok = connection.execute("PRAGMA integrity_check").fetchone()[0]
        inside = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"the backup's database is damaged ({exc})") from None
    finally:
        connection.close()
    if ok != "ok" or inside is None or inside[0] != revision:
        raise BackupError(f"the backup's database is damaged (integrity check: {ok}; schema "
                          f"{inside[0] if inside else 'missing'}, its manifest says {revision})")


def _write_private(path: Path, content: bytes) -> Path:
    """Write a file only its owner can read (mode 0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        handle.write(content)
    return path



def _pg_run(args: list[str], what: str, url: str | None = None) -> str:
    """Run a PostgreSQL tool, on the database at `url` when given (its password through
    PGPASSWORD, never on the command line); BackupError with the tool's last line on failure."""
    tool = shutil.which(args[0])
    if tool is None:
        raise BackupError(f"{args[0]} is not installed: install the PostgreSQL client (apt-get install postgresql-client)")
    args, env = [tool, *args[1:]], {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if url is not None:
        parsed = make_url(url)
        env.update({"PGPASSWORD": parsed.password} if parsed.password else {})
        args = [*args, parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)]
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"{what} ({(result.stderr.strip().splitlines() or ['no output'])[-1]})")
    return result.stdout


def pg_dump(url: str, dest: Path) -> Path:
    """`pg_dump --format=custom` of the whole database into `dest` (one consistent snapshot)."""
    _pg_run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={dest}", "--dbname"],
            "pg_dump failed", url)
    return dest


def revision_in_dump(dump: Path) -> str:
    """The schema revision stored in a custom-format dump (its `alembic_version` row)."""
    script = _pg_run(["pg_restore", "--data-only", "--table=alembic_version", "--file=-", str(dump)],
                     "the PostgreSQL dump is unreadable")
    match = re.search(r"^COPY \S*alembic_version \(version_num\) FROM stdin;\n([^\n\\]+)\n", script, re.M)
    if match is None:
        raise BackupError("the dumped database has no Kiln schema revision")
    return match.group(1).strip()


def pg_script(dump: Path) -> Path:
    """The SQL script of a custom-format dump (pg_restore reads all of it: a damaged dump fails)."""
    script = dump.with_suffix(".sql")
    _pg_run(["pg_restore", "--no-owner", "--no-privileges", f"--file={script}", str(dump)],
            "the backup's PostgreSQL dump is damaged")
    return script


def pg_replace(url: str, script: Path) -> None:
    """Replace the database's `public` schema with the script's objects, in a single
    transaction: on any error nothing changes."""
    _pg_run(["psql", "--no-psqlrc", "--quiet", "--single-transaction", "--set=ON_ERROR_STOP=1",
             "--command=DROP SCHEMA IF EXISTS public CASCADE", "--command=CREATE SCHEMA public",
             f"--file={script}", "--dbname"], "restoring into PostgreSQL failed; nothing was changed", url)
