"""`kiln nodes …`: inventory, bulk import, actions with progress, sync."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from sqlmodel import Session

from fleet import nodes as node_service
from fleet.provisioning.actions import Action
from kiln.auth import Principal
from kiln.cli.common import (
    OutputFormat,
    OutputOption,
    console,
    db_session,
    engine_for,
    print_rows,
    progress_bar,
    settings,
)
from kiln.errors import BadGateway, NotFound, ValidationFailed
from kiln.schema import ensure_current
from kiln.validation import parse_model

if TYPE_CHECKING:
    from fleet.operations import Outcome
    from fleet.runtime import FleetRuntime

nodes_app = typer.Typer(help="Enroll, list, act on and sync bare-metal nodes.", no_args_is_help=True)

NODE_COLUMNS = ["name", "provisioner", "provision_state", "power_state", "maintenance", "rack", "resource_class", "tags"]


# The importer (YAML), the runtime (drivers), operations and sync are imported by the commands
# that use them, so that `kiln nodes list` starts quickly.


def _runtime() -> tuple[FleetRuntime, object]:
    from fleet.runtime import FleetRuntime

    config = settings()
    engine = engine_for(config)
    ensure_current(engine)
    return FleetRuntime.build(config, engine), engine


@nodes_app.command("list")
def list_command(
    tag: str = typer.Option(None, help="Only nodes with this tag."),
    rack: str = typer.Option(None, help="Only nodes in this rack."),
    state: str = typer.Option(None, help="Only nodes in this provision state."),
    output: OutputFormat = OutputOption,
) -> None:
    """List nodes with their provision and power state."""
    with db_session() as session:
        principal = Principal.system()
        rows = node_service.to_public(session, principal, node_service.list_nodes(session, principal, tag=tag, rack=rack, state=state))
    print_rows(rows, NODE_COLUMNS, output, "Nodes")


@nodes_app.command("show")
def show_command(name: str = typer.Argument(..., help="Node name."), output: OutputFormat = OutputOption) -> None:
    """Show one node: BMC, state, hardware facts, GPUs and its latest events."""
    from fleet.node_history import visible_events

    with db_session() as session:
        principal = Principal.system()
        node = node_service.get_node_by_name(session, principal, name)
        public = node_service.to_public(session, principal, [node])[0]
        events = visible_events(session, principal, node.id, limit=10)
    if output == OutputFormat.json:
        typer.echo(json.dumps({**public.model_dump(mode="json"), "events": [e.model_dump(mode="json") for e in events]}, indent=2))
        return
    table = Table(show_header=False, title=f"Node {public.name}")
    for key, value in public.model_dump(mode="json", exclude={"gpus", "facts"}).items():
        table.add_row(key, "-" if value is None else str(value))
    table.add_row("facts", json.dumps(public.facts) if public.facts else "-")
    table.add_row("gpus", "; ".join(f"{g.index}: {g.model}" for g in public.gpus) or "-")
    console.print(table)
    history = Table("at", "kind", "message", "actor", title="Latest events")
    for event in events:
        history.add_row(f"{event.at:%Y-%m-%d %H:%M:%S}", event.kind, event.message, event.actor)
    console.print(history)


@nodes_app.command("import")
def import_command(
    path: Path = typer.Argument(..., help="CSV or YAML file of nodes."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Enroll the valid rows even if others are invalid."),
    concurrency: int = typer.Option(None, "--concurrency", min=1, max=200, help="Nodes enrolled at once."),
    output: OutputFormat = OutputOption,
) -> None:
    """Validate a whole file, then enroll its new nodes; re-importing the same file changes nothing."""
    from fleet.importer import import_nodes

    runtime, engine = _runtime()
    with progress_bar() as progress:
        task = progress.add_task("enrolling", total=None)
        report = import_nodes(
            engine, path, Principal.system(), runtime.drivers, runtime.box, skip_invalid=skip_invalid,
            concurrency=concurrency or settings().bulk_concurrency, on_row=lambda _: progress.advance(task),
        )
    if output == OutputFormat.json:
        typer.echo(json.dumps([r.__dict__ for r in report.rows], indent=2))
    else:
        table = Table("row", "node", "result", "message", title=f"Import of {path.name}")
        for r in report.rows:
            table.add_row(str(r.row), r.name, r.status, r.message)
        console.print(table)
        summary = ", ".join(f"{report.count(s)} {s}" for s in ("created", "unchanged", "invalid", "failed"))
        console.print(summary)
    if not report.ok:
        raise typer.Exit(1)


def _select(session: Session, names: list[str], all_nodes: bool, tag: str | None, rack: str | None, state: str | None):
    if not (names or all_nodes or tag or rack or state):
        raise ValidationFailed("nodes", "name nodes, or select them with --all, --tag, --rack or --state")
    selected = node_service.list_nodes(session, Principal.system(), names=names, tag=tag, rack=rack, state=state)
    missing = sorted(set(names) - {n.name for n in selected})
    if missing:
        raise NotFound(f"no such node: {', '.join(missing)}")
    if not selected:
        raise NotFound("the selection matches no node")
    return selected


@nodes_app.command("action")
def action_command(
    action: Action = typer.Argument(..., help="manage, inspect, provide, deploy, undeploy, rebuild, abort, power-on, "
                                    "power-off, reboot, maintenance-on, maintenance-off"),
    names: list[str] = typer.Argument(None, help="Node names (or use a selection option)."),
    all_nodes: bool = typer.Option(False, "--all", help="Every node."),
    tag: str = typer.Option(None, help="Nodes with this tag."),
    rack: str = typer.Option(None, help="Nodes in this rack."),
    state: str = typer.Option(None, help="Nodes in this provision state."),
    image_url: str = typer.Option(None, "--image-url", help="Image to deploy (deploy, rebuild)."),
    image_checksum: str = typer.Option(None, "--image-checksum", help="Its checksum, e.g. sha256:HEX."),
    reason: str = typer.Option(None, help="Why (maintenance-on)."),
    concurrency: int = typer.Option(None, "--concurrency", min=1, max=200, help="Nodes worked on at once."),
    output: OutputFormat = OutputOption,
) -> None:
    """Run an action on nodes in parallel, show progress, report each node; exit 1 if any failed."""
    from fleet.operations import ActionParams, plan_action

    runtime, engine = _runtime()
    params = ActionParams(image_url=image_url, image_checksum=image_checksum, reason=reason)
    with Session(engine, expire_on_commit=False) as session:
        selected = _select(session, names or [], all_nodes, tag, rack, state)
        operations = plan_action(session, Principal.system(), selected, action, params)
        session.commit()
    with progress_bar() as progress:
        task = progress.add_task(f"{action.value} ×{len(operations)}", total=len(operations))

        def done(outcome: Outcome) -> None:
            progress.advance(task)

        outcomes = runtime.runner.run_many(
            [o.id for o in operations], concurrency or settings().bulk_concurrency, on_done=done
        )
    _print_outcomes(outcomes, output)
    if any(not o.ok for o in outcomes):
        raise typer.Exit(1)


def _print_outcomes(outcomes: list[Outcome], output: OutputFormat) -> None:
    if output == OutputFormat.json:
        typer.echo(json.dumps([o.__dict__ for o in outcomes], indent=2))
        return
    table = Table("node", "action", "result", "state", "seconds", "error")
    for o in outcomes:
        table.add_row(o.node, o.action, "ok" if o.ok else "FAILED", o.state or "-", f"{o.seconds:.1f}", o.error or "")
    console.print(table)
    failed = sum(1 for o in outcomes if not o.ok)
    console.print(f"{len(outcomes) - failed} succeeded, {failed} failed")


@nodes_app.command("sync")
def sync_command() -> None:
    """Pull provision and power state from every configured driver now; exit 1 if a backend failed."""
    from fleet.sync import sync_nodes

    runtime, engine = _runtime()
    report = sync_nodes(engine, runtime.drivers, runtime.box)
    typer.echo(report.summary())
    if report.errors:
        raise BadGateway("sync incomplete: " + "; ".join(f"{p}: {e}" for p, e in sorted(report.errors.items())))


@nodes_app.command("update")
def update_command(
    name: str = typer.Argument(..., help="Node name."),
    redfish_address: str = typer.Option(
        None, "--redfish-address", help="A second, collection-only Redfish address of the node's BMC "
        "(redfish[+http|+https]://HOST[:PORT][/SYSTEM-PATH]; same username and password as its ipmi:// address)."),
    clear_redfish_address: bool = typer.Option(False, "--clear-redfish-address", help="Remove the second address."),
) -> None:
    """Change a node's second, collection-only Redfish address."""
    from fleet.schemas import NodeUpdate

    if (redfish_address is None) == (not clear_redfish_address):
        raise ValidationFailed("redfish_address", "give either --redfish-address URL or --clear-redfish-address")
    data = parse_model(NodeUpdate, {"redfish_address": redfish_address}, keep_none=True)
    with db_session() as session:
        node = node_service.get_node_by_name(session, Principal.system(), name)
        node_service.update_node(session, Principal.system(), node.id, data)
    typer.echo(f"node {name}: redfish_address {redfish_address or 'removed'}")


@nodes_app.command("delete")
def delete_command(name: str = typer.Argument(..., help="Node name.")) -> None:
    """Remove a node from its provisioner and from Kiln."""
    runtime, _ = _runtime()
    with db_session() as session:
        node = node_service.get_node_by_name(session, Principal.system(), name)
        node_service.delete_node(session, Principal.system(), node.id, runtime.drivers, runtime.box)
    typer.echo(f"deleted node {name}")
