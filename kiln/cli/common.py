"""What every CLI command shares: settings, a database session, output as a table or JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session

from kiln import passwords
from kiln.db import create_db_engine
from kiln.schema import ensure_current
from kiln.settings import Settings, load_settings
from kiln.telemetry import configure_tracing

if TYPE_CHECKING:
    from rich.progress import Progress

# Markup and emoji codes off: error text from backends and users (`pip install 'kiln[ironic]'`,
# a node named `r1[2]` or `gpu:smile:`) is printed as written, and no emoji table is loaded at
# every start; styled cells are rich `Text` objects.
console = Console(markup=False, emoji=False)


class OutputFormat(StrEnum):
    """How list commands print their results."""

    table = "table"
    json = "json"


OutputOption = typer.Option(OutputFormat.table, "--output", "-o", help="table (for people) or json (for scripts).")


def settings() -> Settings:
    """Settings from the environment and config file (ConfigError explains what is wrong);
    new password hashes follow their argon2 parameters from here on, and the command's spans
    (bills runs, collector cycles, provisioning) go to KILN_OTLP_ENDPOINT when it is set."""
    loaded = load_settings()
    passwords.configure(loaded)
    configure_tracing(loaded.otlp_endpoint, "kiln-cli")
    return loaded


def engine_for(config: Settings) -> Engine:
    """A database engine for the configured database."""
    return create_db_engine(config.resolved_database_url)


@contextmanager
def db_session() -> Iterator[Session]:
    """A session on a database whose schema is current, committed when the block succeeds."""
    engine = engine_for(settings())
    try:
        ensure_current(engine)
        with Session(engine, expire_on_commit=False) as session:
            yield session
            session.commit()
    finally:
        engine.dispose()


def progress_bar() -> Progress:
    """A transient progress bar (description, bar, done/total, elapsed) for long CLI work.

    Off when output goes to a file or pipe: a transient bar shows nothing there, and its
    refresh thread would still redraw it ten times a second."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # only long work pays for it

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )


def print_rows(rows: Sequence[BaseModel], columns: Sequence[str], output: OutputFormat, title: str = "") -> None:
    """Print models as a rich table, or as a JSON array on stdout for scripts."""
    if output == OutputFormat.json:
        typer.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return
    table = Table(title=title or None)
    for column in columns:
        table.add_column(column)
    for row in rows:
        data = row.model_dump(mode="json")
        table.add_row(*(_cell(data.get(column)) for column in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
