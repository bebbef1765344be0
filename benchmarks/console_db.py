"""The console benchmark's database: the seeded data set from its cache, and a copy of it to serve.

SQLite: a data dir under `~/.cache/kiln/console-bench/KEY/` (`kiln.db` + `seeded.json`); each run
serves a copy of the file. PostgreSQL: the seeded database stays on the server as
`kiln_console_KEY` (owned by `postgres`, so that the run's login role can be dropped), with
`~/.cache/kiln/console-bench/KEY-postgresql/seeded.json` naming it; each run serves a copy made
with `CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY` (the server copies the files), dropped
afterwards. KEY is the parameters, the month and the seeding code; a data set of an older month
or code is removed when a new one is cached. When the server has lost the database (a new
cluster), it is seeded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kiln" / "console-bench"
SEEDING_CODE = ("console_seed.py",)


def cache_key(nodes: int, tenants: int, months: int, now: datetime) -> str:
    """The data set's name: its parameters, its month and a hash of the code that seeds it."""
    digest = hashlib.sha256()
    for name in SEEDING_CODE:
        digest.update((REPO / "benchmarks" / name).read_bytes())
    return f"{nodes}n-{tenants}t-{months}m-{now:%Y-%m}-{digest.hexdigest()[:12]}"


def _seed_into(engine, nodes: int, tenants: int, months: int, now: datetime, log: Callable[[str], None]) -> dict:
    from benchmarks.console_seed import run_bills, seed
    from kiln.schema import upgrade

    upgrade(engine)
    began = time.monotonic()
    data = seed(engine, nodes=nodes, tenants=tenants, months=months, now=now)
    log(f"seeded in {time.monotonic() - began:.0f} s: {data.rows}")
    began = time.monotonic()
    run_bills(engine, data, now, log)
    return {**asdict(data), "seed_s": round(time.monotonic() - began, 1)}


def _prune(keep: Path) -> None:
    """Remove the cached data sets of `keep`'s parameters and database but an older month or seeding code."""
    nodes_tenants_months = "-".join(keep.name.split("-")[:3])
    postgresql = keep.name.endswith("-postgresql")
    for stale in CACHE.glob(f"{nodes_tenants_months}-*"):
        if stale != keep and stale.is_dir() and stale.name.endswith("-postgresql") == postgresql:
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def sqlite_database(nodes: int, tenants: int, months: int, now: datetime, log: Callable[[str], None]
                    ) -> Iterator[tuple[dict[str, str], dict]]:
    """(the server's environment, seeded) for a copy of the cached SQLite data set (seeded first if needed)."""
    from kiln.db import create_db_engine
    from kiln.schema import upgrade

    cached = CACHE / cache_key(nodes, tenants, months, now)
    if (cached / "seeded.json").exists():
        log(f"using the cached data set {cached} (migrating it to this code's schema)")
        engine = create_db_engine(f"sqlite:///{cached / 'kiln.db'}")
        upgrade(engine)  # a no-op at head; builds new indexes once when migrations were added since seeding
        engine.dispose()
    else:
        building = cached.with_name(f"{cached.name}.partial")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        engine = create_db_engine(f"sqlite:///{building / 'kiln.db'}")
        seeded = _seed_into(engine, nodes, tenants, months, now, log)
        engine.dispose()
        (building / "seeded.json").write_text(json.dumps(seeded))
        _prune(building)
        building.rename(cached)
    seeded = json.loads((cached / "seeded.json").read_text())
    with tempfile.TemporaryDirectory(prefix="kiln-console-bench-") as tmp:
        shutil.copy(cached / "kiln.db", Path(tmp) / "kiln.db")  # the server may write (sessions, audit): never to the cache
        yield {"KILN_DATA_DIR": tmp}, seeded


def _admin(server: str):
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    return create_engine(make_url(server).set(drivername="postgresql+psycopg", database="postgres"),
                         isolation_level="AUTOCOMMIT")


def _exists(admin, name: str) -> bool:
    from sqlalchemy import text

    with admin.connect() as conn:
        return conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is not None


def _hand_to_postgres(url: str, name: str, admin) -> None:
    """Everything in the cached database to the `postgres` role: the run's login role is dropped at its end."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("REASSIGN OWNED BY CURRENT_USER TO postgres"))
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" OWNER TO postgres'))


@contextlib.contextmanager
def postgresql_database(nodes: int, tenants: int, months: int, now: datetime, log: Callable[[str], None],
                        server: str) -> Iterator[tuple[dict[str, str], dict]]:
    """(the server's environment, seeded) for a copy of the cached PostgreSQL data set on `server`
    (a URL whose role may create databases; seeded first if needed), dropped afterwards."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from kiln.db import create_db_engine
    from kiln.schema import upgrade

    key = cache_key(nodes, tenants, months, now)
    cached, name = CACHE / f"{key}-postgresql", "kiln_console_" + key.replace("-", "_")
    admin, base = _admin(server), make_url(server).set(drivername="postgresql+psycopg")
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        if (cached / "seeded.json").exists() and _exists(admin, name):
            log(f"using the cached database {name} (migrating it to this code's schema)")
            engine = create_db_engine(url)
            upgrade(engine)
            engine.dispose()
        else:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            engine = create_db_engine(url)
            began = time.monotonic()
            seeded = _seed_into(engine, nodes, tenants, months, now, log)
            engine.dispose()
            seeded["setup_s"] = round(time.monotonic() - began, 1)
            cached.mkdir(parents=True, exist_ok=True)
            (cached / "seeded.json").write_text(json.dumps({**seeded, "database": name}))
            _prune(cached)
        _hand_to_postgres(url, name, admin)
        with admin.connect() as conn:  # older months' or code's data sets of these parameters
            prefix = "kiln_console_" + f"{nodes}n_{tenants}t_{months}m_"
            for (stale,) in conn.execute(text("SELECT datname FROM pg_database WHERE starts_with(datname, :p)"),
                                         {"p": prefix}).all():
                if stale != name:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{stale}" WITH (FORCE)'))
        seeded = json.loads((cached / "seeded.json").read_text())
        copy = f"kiln_bench_{uuid.uuid4().hex[:12]}"
        began = time.monotonic()
        with admin.connect() as conn:  # the server writes (sessions, audit, the bills run): never to the cache
            conn.execute(text(f'CREATE DATABASE "{copy}" TEMPLATE "{name}" STRATEGY FILE_COPY'))
        log(f"copied {name} in {time.monotonic() - began:.0f} s")
        try:
            with tempfile.TemporaryDirectory(prefix="kiln-console-bench-") as tmp:
                yield {"KILN_DATA_DIR": tmp, "KILN_DATABASE_URL": base.set(database=copy).render_as_string(
                    hide_password=False)}, seeded
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)'))
    finally:
        admin.dispose()
