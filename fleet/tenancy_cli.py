"""`kiln vdcs …` and `kiln leases …`."""

from __future__ import annotations

from datetime import datetime

import typer

from kiln.auth import Principal
from kiln.cli.common import OutputFormat, OutputOption, db_session, print_rows
from kiln.db import utcnow
from kiln.errors import ValidationFailed
from kiln.validation import parse_model

# Each command imports the services it uses: `kiln vdcs list` loads no lease code.

vdcs_app = typer.Typer(help="Slices of the fleet (VDCs) granted to tenants, with quotas.", no_args_is_help=True)
leases_app = typer.Typer(help="Lease nodes (or MIG instances of their GPUs) to tenants; the timeline billing uses.",
                         no_args_is_help=True)

MaxNodes = typer.Option(None, "--max-nodes", min=0, help="Most nodes held at once.")
MaxGpus = typer.Option(None, "--max-gpus", min=0, help="Most GPUs held at once.")
MaxGpuHours = typer.Option(None, "--max-gpu-hours", min=0, help="Most GPU-hours per calendar month.")
Budget = typer.Option(None, "--budget", help="Spend budget per month (metering alerts on it).")


def _selectors(values: list[str]) -> list[dict[str, str]]:
    selectors = []
    for value in values:
        kind, sep, match = value.partition("=")
        if not sep:
            raise ValidationFailed("selector", f"{value!r} must look like KIND=VALUE, e.g. rack=r1 or tag=train")
        selectors.append({"kind": kind, "value": match})
    return selectors


@vdcs_app.command("create")
def vdcs_create(
    name: str = typer.Argument(..., help="VDC name (lower-case, digits, hyphens)."),
    node: list[str] = typer.Option([], "--node", help="A node to include (repeat)."),
    selector: list[str] = typer.Option([], "--selector", help="KIND=VALUE with KIND tag, rack, resource_class or gpu_model."),
    description: str = typer.Option("", help="What the slice is for."),
    max_nodes: int = MaxNodes, max_gpus: int = MaxGpus, max_gpu_hours: int = MaxGpuHours, budget: str = Budget,
) -> None:
    """Create a VDC with VDC-wide quotas."""
    from fleet import vdcs as vdc_service
    from fleet.tenancy_schemas import VdcCreate

    data = parse_model(VdcCreate, {
        "name": name, "description": description, "nodes": node, "selectors": _selectors(selector),
        "max_nodes": max_nodes, "max_gpus": max_gpus, "max_gpu_hours": max_gpu_hours, "budget": budget,
    })
    with db_session() as session:
        vdc = vdc_service.create_vdc(session, Principal.system(), data)
        members = vdc_service.to_public(session, Principal.system(), [vdc])[0].member_nodes
    typer.echo(f"created VDC {name} with {len(members)} node(s)")


@vdcs_app.command("grant")
def vdcs_grant(
    name: str = typer.Argument(..., help="VDC name."),
    tenant: str = typer.Argument(..., help="Tenant slug."),
    max_nodes: int = MaxNodes, max_gpus: int = MaxGpus, max_gpu_hours: int = MaxGpuHours, budget: str = Budget,
) -> None:
    """Grant a VDC to a tenant with that tenant's quotas (re-granting updates them)."""
    from fleet import vdcs as vdc_service
    from fleet.tenancy_schemas import Grant, VdcUpdate
    from kiln.tenants import tenants_by_slug

    grant = parse_model(Grant, {"tenant": tenant, "max_nodes": max_nodes, "max_gpus": max_gpus,
                                "max_gpu_hours": max_gpu_hours, "budget": budget})
    with db_session() as session:
        principal = Principal.system()
        vdc = vdc_service.get_vdc_by_name(session, principal, name)
        current = vdc_service.to_public(session, principal, [vdc])[0].tenants
        grants = [Grant(**g.model_dump(exclude={"used"})) for g in current if g.tenant != tenant] + [grant]
        tenants_by_slug(session, [tenant])
        vdc_service.update_vdc(session, principal, vdc.id, VdcUpdate(tenants=grants))
    typer.echo(f"granted VDC {name} to {tenant}")


@vdcs_app.command("list")
def vdcs_list(output: OutputFormat = OutputOption) -> None:
    """List VDCs with their tenants and quota use."""
    from fleet import vdcs as vdc_service

    with db_session() as session:
        principal = Principal.system()
        rows = vdc_service.to_public(session, principal, vdc_service.list_vdcs(session, principal))
    print_rows(rows, ["name", "member_nodes", "max_nodes", "max_gpus", "max_gpu_hours", "budget", "used"], output, "VDCs")


def _when(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    if value == "now":
        return utcnow()
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed(field, f"{value!r} is not an ISO 8601 time like 2026-10-01T00:00:00Z") from None
    if parsed.tzinfo is None:
        raise ValidationFailed(field, f"{value!r} needs a time zone, e.g. a trailing Z for UTC")
    return parsed


@leases_app.command("create")
def leases_create(
    node: str = typer.Argument(..., help="Node name."),
    tenant: str = typer.Argument(..., help="Tenant slug."),
    vdc: str = typer.Option(None, help="VDC, when the node is in several of the tenant's VDCs."),
    start: str = typer.Option(None, help="ISO 8601 start (default now)."),
    end: str = typer.Option(None, help="ISO 8601 end (default open-ended)."),
    gpu: int = typer.Option(None, "--gpu", min=0, help="Lease one MIG instance of this GPU (0-based) instead of the node."),
    profile: str = typer.Option(None, "--profile", help="The instance's MIG profile, e.g. 3g.40gb (with --gpu)."),
    note: str = typer.Option("", help="Free text."),
) -> None:
    """Lease a node (or, with --gpu and --profile, one MIG instance of its GPU) to a tenant; refused
    beyond quota, when the node is taken, or when the instance does not fit its GPU."""
    from fleet import instance_leases as instance_service
    from fleet import leases as lease_service
    from fleet.tenancy_schemas import GpuInstanceLeaseCreate, LeaseCreate

    if (gpu is None) != (profile is None):
        raise ValidationFailed("gpu" if gpu is None else "profile", "--gpu and --profile go together: both lease a MIG instance")
    fields = {"node": node, "tenant": tenant, "vdc": vdc, "note": note,
              "starts_at": _when(start, "start"), "ends_at": _when(end, "end")}
    with db_session() as session:
        if gpu is None:
            lease = lease_service.create_lease(session, Principal.system(), parse_model(LeaseCreate, fields))
            what = node
        else:
            data = parse_model(GpuInstanceLeaseCreate, {**fields, "gpu_index": gpu, "profile": profile})
            lease = instance_service.create_instance_lease(session, Principal.system(), data)
            what = f"{node} GPU {gpu} {profile}"
    kind = "lease" if gpu is None else "GPU instance lease"
    typer.echo(f"{kind} {lease.id}: {what} → {tenant} from {lease.starts_at:%Y-%m-%dT%H:%M:%SZ}")


@leases_app.command("end")
def leases_end(
    lease_id: int = typer.Argument(..., help="Lease id (see `kiln leases list`)."),
    at: str = typer.Option("now", help="ISO 8601 end time, or now."),
    instance: bool = typer.Option(False, "--instance", help="The id is a GPU instance lease's (gpu column set in the list)."),
) -> None:
    """End a lease (with --instance: a GPU instance lease)."""
    from fleet import instance_leases as instance_service
    from fleet import leases as lease_service
    from fleet.tenancy_schemas import LeaseUpdate

    data = LeaseUpdate(ends_at=_when(at, "at"))
    with db_session() as session:
        if instance:
            lease = instance_service.update_instance_lease(session, Principal.system(), lease_id, data)
        else:
            lease = lease_service.update_lease(session, Principal.system(), lease_id, data)
    typer.echo(f"{'GPU instance lease' if instance else 'lease'} {lease.id} ends {lease.ends_at:%Y-%m-%dT%H:%M:%SZ}")


@leases_app.command("list")
def leases_list(
    node: str = typer.Option(None, help="Only this node's leases."),
    tenant: str = typer.Option(None, help="Only this tenant's leases."),
    active: bool = typer.Option(False, "--active", help="Only leases in force now."),
    output: OutputFormat = OutputOption,
) -> None:
    """List leases and GPU instance leases, newest first."""
    from fleet import instance_leases as instance_service
    from fleet import leases as lease_service
    from fleet.nodes import get_node_by_name
    from kiln.tenants import tenants_by_slug

    with db_session() as session:
        principal = Principal.system()
        node_id = get_node_by_name(session, principal, node).id if node else None
        tenant_id = tenants_by_slug(session, [tenant])[0].id if tenant else None
        found = lease_service.list_leases(session, principal, node_id=node_id, tenant_id=tenant_id, active=active)
        instances = instance_service.list_instance_leases(session, principal, node_id=node_id, tenant_id=tenant_id, active=active)
        rows = lease_service.to_public(session, found) + instance_service.to_public(session, instances)
    rows.sort(key=lambda row: row.starts_at, reverse=True)
    columns = ["id", "node", "gpu_index", "profile", "tenant", "vdc", "starts_at", "ends_at", "created_by"]
    print_rows(rows, columns, output, "Leases (gpu_index set: a GPU instance lease; end it with --instance)")
