"""`kiln carbon import FILE`, `kiln carbon fetch`, `kiln carbon emissions --period P`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from kiln import audit
from kiln.auth import Principal
from kiln.cli.common import OutputFormat, OutputOption, db_session, print_rows, settings
from kiln.errors import BadRequest, ValidationFailed
from metering.carbon import EmissionsRow, emissions
from metering.carbon_intensity import fetch_history, known_zones, parse_hour, parse_intensity_csv, store
from metering.periods import parse_period

carbon_app = typer.Typer(help="Grid carbon intensity per zone and hour, and the emissions of metered energy.",
                         no_args_is_help=True)


@carbon_app.command("import")
def carbon_import(file: Path = typer.Argument(..., help="CSV: zone,hour,g_co2e_per_kwh (hours on the hour, with a timezone)")) -> None:
    """Import intensity figures: every row is checked first; one bad row and nothing is stored."""
    try:
        text = file.read_text()
    except OSError as exc:
        raise ValidationFailed("file", f"cannot read {file}: {exc.strerror}") from None
    config = settings()
    with db_session() as session:
        rows = parse_intensity_csv(text, known_zones(session, config.carbon_zone))
        count = store(session, rows, "import")
        zones = sorted({row["zone"] for row in rows})
        audit.record(session, Principal.system(), "import", "carbon_intensity", file.name, detail={"rows": count, "zones": zones})
    typer.echo(f"imported {count} hourly intensity figure(s) for {', '.join(zones)}")


@carbon_app.command("fetch")
def carbon_fetch(
    zone: list[str] = typer.Option([], "--zone", help="Zone to fetch (repeat); default: every zone nodes use."),
    since: str = typer.Option(None, "--since", help="Fill a past range from this hour (e.g. 2026-11-01T00:00Z) to now."),
) -> None:
    """Fetch hourly intensity from KILN_CARBON_URL: the last 24 hours, or a past range with --since."""
    config = settings()
    if not config.carbon_url:
        raise BadRequest("KILN_CARBON_URL is not set: set it to an Electricity Maps-compatible API, or use `kiln carbon import`")
    try:
        start = parse_hour(since) if since else None
    except ValueError as exc:
        raise ValidationFailed("since", str(exc)) from None
    token = config.carbon_token.get_secret_value() if config.carbon_token else None
    with db_session() as session:
        zones = zone or sorted(known_zones(session, config.carbon_zone))
        if not zones:
            raise BadRequest("no zone to fetch: give nodes a zone, set KILN_CARBON_ZONE, or pass --zone")
        fetched = {name: store(session, fetch_history(config.carbon_url, name, token=token, since=start), "fetch")
                   for name in zones}
    typer.echo(", ".join(f"{name}: {count} hour(s)" for name, count in fetched.items()))


class Grouping(StrEnum):
    """What emissions are reported per."""

    tenant = "tenant"
    node = "node"
    vdc = "vdc"
    namespace = "namespace"


@carbon_app.command("emissions")
def carbon_emissions(
    period: str = typer.Option(..., "--period", help="YYYY-MM"),
    by: Grouping = typer.Option(Grouping.tenant, "--by", help="tenant, or tenant and node, VDC or Kubernetes namespace."),
    output: OutputFormat = OutputOption,
) -> None:
    """kWh and kg CO2e per tenant in a period, and the idle energy nobody was charged for."""
    config = settings()
    with db_session() as session:
        report = emissions(session, Principal.system(), parse_period(period, allow_future=True), config.carbon_zone,
                           config.embodied_kg_per_node_hour, by=by.value)
    rows = [*report.tenants]
    if report.idle_kwh is not None:
        rows.append(EmissionsRow(tenant="(idle)", kwh=report.idle_kwh, kg_co2e=report.idle_kg_co2e,
                                 kwh_without_intensity=report.idle_kwh_without_intensity))
    place = [by.value] if by != Grouping.tenant else []
    print_rows(rows, ["tenant", *place, "kwh", "kg_co2e", "kwh_without_intensity", "embodied_kg_co2e"], output,
               f"Emissions {period}")
