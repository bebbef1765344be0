"""`kiln bills …`, `kiln price-cards …`, `kiln budgets …` and `kiln export …` (the scripting contract)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from kiln.auth import Principal
from kiln.cli.common import OutputFormat, OutputOption, db_session, print_rows, settings
from kiln.errors import ValidationFailed
from metering.periods import parse_period

# Each command imports the services it uses, so that a list command loads only its own.

bills_app = typer.Typer(help="Bills per tenant and period: run (draft), finalise, list.", no_args_is_help=True)
price_cards_app = typer.Typer(help="Effective-dated list prices per SKU.", no_args_is_help=True)
budgets_app = typer.Typer(help="Budgets and their alerts.", no_args_is_help=True)
export_app = typer.Typer(help="Exports for finance: FOCUS 1.2 and chargeback CSV.", no_args_is_help=True)

PeriodOption = typer.Option(..., "--period", help="Billing period YYYY-MM (UTC calendar month).")


class ExportFormat(StrEnum):
    """FOCUS export file formats."""

    csv = "csv"
    parquet = "parquet"


@bills_app.command("run")
def bills_run(period: str = PeriodOption) -> None:
    """Build the period's usage and (re)write its draft bills; finalised bills get corrections instead."""
    from metering import budgets as budget_service
    from metering.bills import run_period

    config = settings()
    with db_session() as session:
        principal = Principal.system()
        summary = run_period(session, principal, period, policy=config.idle_cost_policy)
        raised = budget_service.check_alerts(session, principal, period,
                                             carbon=budget_service.CarbonContext.of(settings()))
        budget_service.deliver_alerts(session, config.budget_webhook_url, config.budget_webhook_timeout)
    usage = ", ".join(f"{source} {count}" for source, count in summary.usage_rows.items())
    typer.echo(f"period {period}: {len(summary.drafts)} draft bill(s), {summary.corrections} correction line(s), "
               f"usage rows ({usage}), idle cost {summary.idle_cost} ({config.idle_cost_policy}), {len(raised)} new alert(s)")


@bills_app.command("finalize")
def bills_finalize(
    period: str = PeriodOption, tenant: str = typer.Option(None, "--tenant", help="Only this tenant's bill."),
) -> None:
    """Bring the period's drafts up to date and freeze them; an already finalised bill is an error."""
    from metering import views
    from metering.bills import finalise_period

    with db_session() as session:
        done = finalise_period(session, Principal.system(), period, policy=settings().idle_cost_policy, tenant=tenant)
        rows = views.bill_public(session, done)
    for bill in rows:
        typer.echo(f"finalised {bill.tenant} {bill.period}: {bill.total} {bill.currency}")


@bills_app.command("list")
def bills_list(
    period: str = typer.Option(None, "--period", help="Only this period (YYYY-MM)."),
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant."),
    output: OutputFormat = OutputOption,
) -> None:
    """Bills with tenant, total, currency and status (JSON: every field)."""
    from kiln.tenants import tenants_by_slug
    from metering import views

    if period is not None:
        parse_period(period, allow_future=True)
    with db_session() as session:
        tenant_id = tenants_by_slug(session, [tenant])[0].id if tenant else None
        rows = views.bill_public(session, views.list_bills(session, Principal.system(), period=period, tenant_id=tenant_id))
    print_rows(rows, ["tenant", "period", "status", "total", "currency", "forecast_total"], output, "Bills")


@bills_app.command("show")
def bills_show(
    tenant: str = typer.Argument(..., help="Tenant slug."), period: str = PeriodOption, output: OutputFormat = OutputOption,
) -> None:
    """One tenant's bill for a period, line by line."""
    from kiln.tenants import tenants_by_slug
    from metering import views

    with db_session() as session:
        tenant_id = tenants_by_slug(session, [tenant])[0].id
        found = views.list_bills(session, Principal.system(), period=parse_period(period, allow_future=True), tenant_id=tenant_id)
        if not found:
            raise ValidationFailed("period", f"tenant '{tenant}' has no bill for {period}")
        bill = views.bill_public(session, found, with_lines=True)[0]
    print_rows(bill.lines, ["id", "kind", "sku", "quantity", "unit", "list_unit_price", "contracted_cost", "charge_class",
                            "corrects_period"], output, f"{tenant} {period} ({bill.status}): {bill.total} {bill.currency}")


@bills_app.command("idle")
def bills_idle(period: str = PeriodOption, output: OutputFormat = OutputOption) -> None:
    """The period's idle capacity, priced at list (as of its last run)."""
    from metering import views

    with db_session() as session:
        rows = [views.IdleChargePublic(**c.model_dump()) for c in views.idle_charges(session, parse_period(period))]
    print_rows(rows, ["sku", "quantity", "unit", "unit_price", "cost", "currency", "policy"], output, f"Idle capacity {period}")


@price_cards_app.command("import")
def price_cards_import(
    file: Path = typer.Argument(..., help="CSV: sku,unit,unit_price,currency,effective_from[,effective_to]"),
) -> None:
    """Import price cards: every row is checked first; one bad row and nothing is stored."""
    from metering.price_cards import import_cards

    try:
        text = file.read_text()
    except OSError as exc:
        raise ValidationFailed("file", f"cannot read {file}: {exc.strerror}") from None
    with db_session() as session:
        stored = import_cards(session, Principal.system(), text)
    typer.echo(f"imported {len(stored)} price card(s)")


@price_cards_app.command("list")
def price_cards_list(sku: str = typer.Option(None, help="Only this SKU."), output: OutputFormat = OutputOption) -> None:
    """Price cards by SKU and start."""
    from metering.price_cards import PriceCardPublic, list_cards

    with db_session() as session:
        rows = [PriceCardPublic(**c.model_dump()) for c in list_cards(session, sku=sku)]
    print_rows(rows, ["id", "sku", "unit", "unit_price", "currency", "effective_from", "effective_to"], output, "Price cards")


@budgets_app.command("check")
def budgets_check(period: str = PeriodOption) -> None:
    """Raise newly crossed budget and GPU-hours quota thresholds and deliver pending alerts to the webhook."""
    from metering import budgets as budget_service

    config = settings()
    with db_session() as session:
        raised = budget_service.check_alerts(session, Principal.system(), period,
                                             carbon=budget_service.CarbonContext.of(settings()))
        sent = budget_service.deliver_alerts(session, config.budget_webhook_url, config.budget_webhook_timeout)
    typer.echo(f"{len(raised)} new alert(s); {sent} delivered to the webhook")


@budgets_app.command("alerts")
def budgets_alerts(period: str = typer.Option(None, "--period"), output: OutputFormat = OutputOption) -> None:
    """Raised alerts, newest first, with delivery status."""
    from metering import budgets as budget_service

    with db_session() as session:
        rows = budget_service.alerts_public(session, budget_service.list_alerts(session, Principal.system(), period))
    print_rows(rows, ["id", "kind", "tenant", "period", "threshold", "message", "delivered_at"], output, "Alerts")


@export_app.command("focus")
def export_focus(
    period: str = PeriodOption,
    format: ExportFormat = typer.Option(ExportFormat.csv, "--format", help="csv or parquet."),
    out: Path = typer.Option(..., "--out", help="File to write (replaced)."),
) -> None:
    """FOCUS 1.2 export of a period's bills; the file is written only when the period has bills."""
    from metering import exports

    config = settings()
    with db_session() as session:
        exports.check_exportable(session, Principal.system(), period)
        partial = out.with_name(out.name + ".partial")
        rows = exports.export_focus(session, Principal.system(), period, format.value, partial, config.billing_account_name,
                                    config.carbon_zone)
    partial.replace(out)
    typer.echo(f"wrote {rows} FOCUS row(s) to {out}")


@export_app.command("chargeback")
def export_chargeback(
    period: str = PeriodOption, out: Path = typer.Option(..., "--out", help="CSV file to write (replaced)."),
) -> None:
    """Chargeback CSV: lines per cost centre, tenant and SKU, subtotals per cost centre, a grand total."""
    from metering import exports

    config = settings()
    with db_session() as session:
        partial = out.with_name(out.name + ".partial")
        rows = exports.export_chargeback(session, Principal.system(), period, partial, config.billing_account_name)
    partial.replace(out)
    typer.echo(f"wrote the chargeback of {rows} bill line(s) to {out}")
