"""Consistent database snapshots for backups, and putting them back, for SQLite and PostgreSQL.

SQLite: the online backup API (consistent while Kiln writes; replaces a target's contents in
one step). PostgreSQL: `pg_dump --format=custom` (one snapshot), checked by reading it whole
with `pg_restore`, and replayed by `psql` in a single transaction. Passwords reach the
PostgreSQL tools through PGPASSWORD, never on their command line.
"""

from __future__ import annotations

import codecs

import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from kiln.backup_archive import BackupError


def database_kind(url: str) -> str:
    """`sqlite` or `postgresql` for a database URL; BackupError for anything else."""
    backend = make_url(url).get_backend_name()
    if backend not in {"sqlite", "postgresql"}:
        raise BackupError(f"cannot back up a {backend} database: Kiln supports SQLite and PostgreSQL")
    return backend


def sqlite_path(url: str) -> Path:
    """The file of a SQLite URL; BackupError for an in-memory database."""
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


def check_sqlite_dump(dump: Path, revision: str) -> None:
    """BackupError unless the dumped SQLite file passes its integrity check at `revision`."""
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
    _check_utf8(script)
    return script


def _check_utf8(script: Path) -> None:
    """A dump's data stored uncompressed is not checked by pg_restore: damaged bytes there come
    out as text that is not UTF-8 (what Kiln's databases hold); refuse it before psql runs."""
    decoder, done = codecs.getincrementaldecoder("utf-8")(), 0
    with script.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise BackupError(f"the backup's database is damaged (its PostgreSQL dump holds bytes that are not "
                                  f"UTF-8 at byte {done + exc.start})") from None
            done += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise BackupError("the backup's database is damaged (its PostgreSQL dump ends inside a character)") from None


def pg_replace(url: str, script: Path) -> None:
    """Replace the database's `public` schema with the script's objects, in a single
    transaction: on any error nothing changes."""
    _pg_run(["psql", "--no-psqlrc", "--quiet", "--single-transaction", "--set=ON_ERROR_STOP=1",
             "--command=DROP SCHEMA IF EXISTS public CASCADE", "--command=CREATE SCHEMA public",
             f"--file={script}", "--dbname"], "restoring into PostgreSQL failed; nothing was changed", url)
