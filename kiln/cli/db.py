"""`kiln db partitions`: list the monthly partitions (PostgreSQL) and detach old months for archiving."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from kiln.cli.common import OutputFormat, OutputOption, console, engine_for, settings
from kiln.db import utcnow

db_app = typer.Typer(help="Database housekeeping (PostgreSQL partitions).", no_args_is_help=True)
partitions_app = typer.Typer(help="Monthly partitions of usage_record and rollup_5m (PostgreSQL only).")
db_app.add_typer(partitions_app, name="partitions")


@partitions_app.callback(invoke_without_command=True)
def partitions(ctx: typer.Context, output: OutputFormat = OutputOption) -> None:
    """List every partition (month, attached or detached, estimated rows, size)."""
    if ctx.invoked_subcommand is not None:
        return
    from kiln.partitions import list_partitions, require_partitioned

    engine = engine_for(settings())
    try:
        with engine.connect() as connection:
            require_partitioned(connection)
            found = list_partitions(connection)
    finally:
        engine.dispose()
    if output == OutputFormat.json:
        typer.echo(json.dumps([{"table": p.table, "partition": p.name, "month": p.month, "attached": p.attached,
                                "rows_estimate": p.rows, "bytes": p.bytes} for p in found], indent=2))
        return
    table = Table(title="partitions")
    for column in ("table", "month", "partition", "state", "rows (est.)", "size"):
        table.add_column(column)
    for p in found:
        table.add_row(p.table, p.month, p.name, "attached" if p.attached else "detached",
                      "-" if p.rows < 0 else str(p.rows), f"{p.bytes / 1024:.0f} KiB")
    console.print(table)


@partitions_app.command("detach")
def detach(
    month: str = typer.Argument(..., help="The month to detach, YYYY-MM (must be over)."),
    table: list[str] = typer.Option(None, "--table", help="Only this table (usage_record, rollup_5m); repeatable."),
) -> None:
    """Detach a past month's partitions: each becomes a plain table Kiln no longer reads, to pg_dump and drop."""
    from kiln.partitions import PARTITIONED, PartitionError, detach_month

    unknown = sorted(set(table or ()) - set(PARTITIONED))
    if unknown:
        raise PartitionError(f"not a partitioned table: {', '.join(unknown)} (choose from {', '.join(PARTITIONED)})")
    engine = engine_for(settings())
    try:
        with engine.begin() as connection:
            detached = detach_month(connection, month, utcnow(), tuple(table or PARTITIONED))
    finally:
        engine.dispose()
    for name in detached:
        typer.echo(f"detached {name}: archive it with `pg_dump --table={name}`, then `DROP TABLE {name}`")
