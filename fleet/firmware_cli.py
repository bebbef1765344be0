"""`kiln firmware baseline import FILE`, `kiln firmware baseline list`, `kiln firmware compliance`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from fleet import firmware as baseline_service
from fleet.firmware_compliance import STATUSES, compliance, compliance_csv
from kiln.auth import Principal
from kiln.cli.common import OutputFormat, OutputOption, db_session, print_rows
from kiln.errors import ValidationFailed

firmware_app = typer.Typer(help="Firmware baselines per resource class or GPU model, and the fleet's compliance.",
                           no_args_is_help=True)
baseline_app = typer.Typer(help="The firmware versions nodes should run.", no_args_is_help=True)
firmware_app.add_typer(baseline_app, name="baseline")


class ComplianceFormat(StrEnum):
    """How `kiln firmware compliance` prints."""

    table = "table"
    json = "json"
    csv = "csv"


@baseline_app.command("import")
def baseline_import(file: Path = typer.Argument(..., help="CSV: resource_class,component,version")) -> None:
    """Replace the baselines of the resource classes in FILE; one bad row and nothing is stored."""
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationFailed("file", f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None
    with db_session() as session:
        replaced = baseline_service.import_csv(session, Principal.system(), text, file.name)
    typer.echo("replaced the baseline of " + ", ".join(f"{scope} ({count} component(s))" for scope, count in replaced.items()))


@baseline_app.command("list")
def baseline_list(output: OutputFormat = OutputOption) -> None:
    """Every baseline entry: resource class (or gpu:<model>), component, version, who set it when."""
    with db_session() as session:
        rows = baseline_service.baselines_public(baseline_service.list_baselines(session, Principal.system()))
    print_rows(rows, ["resource_class", "component", "version", "updated_at", "updated_by"], output, "Firmware baselines")


@firmware_app.command("compliance")
def firmware_compliance(
    status: list[str] = typer.Option([], "--status", help=f"Only this status (repeat): {', '.join(STATUSES)}."),
    behind: bool = typer.Option(False, "--behind", help="Only components behind their baseline (= --status behind)."),
    node: str = typer.Option(None, "--node", help="Only this node."),
    output: ComplianceFormat = typer.Option(ComplianceFormat.table, "--output", "-o", help="table, json or csv."),
) -> None:
    """Each node's firmware against its baseline: expected, actual and status per component."""
    wanted = list(status) + (["behind"] if behind else [])
    unknown = sorted(set(wanted) - set(STATUSES))
    if unknown:
        raise ValidationFailed("status", f"unknown status {', '.join(unknown)}; expected one of {', '.join(STATUSES)}")
    with db_session() as session:
        rows = compliance(session, Principal.system(), statuses=wanted, node=node)
    if output == ComplianceFormat.csv:
        typer.echo(compliance_csv(rows), nl=False)
        return
    print_rows(rows, ["node", "baseline", "component", "firmware_id", "expected", "actual", "status"],
               OutputFormat(output.value), "Firmware compliance")
