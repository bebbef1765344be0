"""`/api/v1/usage`, `/api/v1/price-cards`, `/api/v1/discounts`, `/api/v1/bills`, `/api/v1/budgets`
and `/api/v1/exports`.

Tenant roles see only their own usage, bills, discounts and budgets (another tenant's object
is 404); finance and infra-admin see all. Price cards are readable by every signed-in role.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from pydantic_core import to_json
from sqlmodel import select

from kiln.api.deps import CurrentPrincipal, RowId, SessionDep
from kiln.models import Tenant
from kiln.roles import Role
from kiln.settings import Settings
from metering import bills as bill_service
from metering import budgets as budget_service
from metering import discounts as discount_service
from metering import exports
from metering import price_cards as card_service
from metering import views
from metering.carbon import EmissionsReport, emissions
from metering.efficiency import EfficiencyRow, efficiency
from metering.namespace_efficiency import NamespaceEfficiencyRow, namespace_efficiency
from metering.periods import parse_period, period_bounds
from metering.reconcile import ReconciliationRow, reconcile
from metering.usage import list_usage, usage_totals

router = APIRouter(prefix="/api/v1")
Period = Annotated[str, Query(description="Billing period, `YYYY-MM` (UTC calendar month).")]
CHUNK = 64 * 1024


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _tenant_id(session: SessionDep, slug: str | None) -> int | None:
    if slug is None:
        return None
    found = session.exec(select(Tenant.id).where(Tenant.slug == slug)).first()
    return found if found is not None else -1  # an unknown tenant matches nothing


class RunRequest(BaseModel):
    """A period to build usage and draft bills for."""

    model_config = ConfigDict(extra="forbid")

    period: str


class FinaliseRequest(RunRequest):
    """A period to finalise, for every tenant or one."""

    tenant: str | None = None


class RunResult(BaseModel):
    """What a bills run did."""

    period: str
    usage_rows: dict[str, int]
    bills: list[views.BillPublic]
    corrections: int
    idle_cost: str


class UsageTotalPublic(BaseModel):
    """A tenant's total of one SKU from one source over a period."""

    tenant: str
    sku: str
    unit: str
    source: str
    quantity: str


# --- usage ---------------------------------------------------------------------------------------

@router.get("/usage", response_model=list[views.UsagePublic], tags=["usage"], summary="Hourly usage records")
def usage_endpoint(
    session: SessionDep, principal: CurrentPrincipal, period: Period, tenant: str | None = None, sku: str | None = None,
    source: str | None = None, resource: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000, offset: Annotated[int, Query(ge=0)] = 0,
):
    """Your tenants' usage rows in a period (all tenants for global roles), by hour."""
    start, end = period_bounds(parse_period(period, allow_future=True))
    rows = list_usage(session, principal, start, end, tenant_id=_tenant_id(session, tenant), sku=sku, source=source,
                      resource_id=resource, limit=limit, offset=offset)
    return views.usage_public(session, rows)


@router.get("/usage/totals", response_model=list[UsageTotalPublic], tags=["usage"], summary="Usage totals per tenant and SKU")
def usage_totals_endpoint(session: SessionDep, principal: CurrentPrincipal, period: Period):
    """Per tenant, SKU and source: the period's total quantity."""
    start, end = period_bounds(parse_period(period, allow_future=True))
    totals = usage_totals(session, principal, start, end)
    slugs = views.tenant_slugs(session, {t[0] for t in totals})
    return [UsageTotalPublic(tenant=slugs.get(t, "?"), sku=s, unit=u, source=src, quantity=format(q.normalize(), "f"))
            for t, s, u, src, q in totals]


@router.get("/usage/reconciliation", response_model=list[ReconciliationRow], tags=["usage"],
            summary="Kiln's Kubernetes usage beside OpenCost's")
def reconciliation_endpoint(session: SessionDep, principal: CurrentPrincipal, period: Period):
    """Per namespace: Kiln's GPU/CPU/RAM request-hours, OpenCost's imported figures, and the difference."""
    return reconcile(session, principal, parse_period(period, allow_future=True))


@router.get("/usage/emissions", response_model=EmissionsReport, tags=["usage"],
            summary="Energy and emissions per tenant")
def emissions_endpoint(session: SessionDep, principal: CurrentPrincipal, period: Period, request: Request,
                       by: Literal["tenant", "node", "vdc", "namespace"] = "tenant"):
    """Per tenant you may see (or per tenant and node, VDC or Kubernetes namespace, with `by`): metered kWh and kg
    CO2e (kWh × the hour's grid intensity in the node's zone, to the gram), kWh without an
    intensity figure, embodied kg CO2e; idle energy for global roles."""
    config = _settings(request)
    return emissions(session, principal, parse_period(period, allow_future=True), config.carbon_zone,
                     config.embodied_kg_per_node_hour, by=by)


@router.get("/usage/efficiency", response_model=list[EfficiencyRow], tags=["usage"],
            summary="GPU efficiency per tenant: used ÷ measured GPU-hours, with coverage (measured ÷ allocated)")
def efficiency_endpoint(session: SessionDep, principal: CurrentPrincipal, period: Period):
    """From DCGM/ROCm utilisation of leased nodes' GPUs, each sample weighted by its real interval."""
    return efficiency(session, principal, parse_period(period, allow_future=True))


@router.get("/usage/efficiency/namespaces", response_model=list[NamespaceEfficiencyRow], tags=["usage"],
            summary="GPU efficiency per Kubernetes namespace, with coverage and the cost of idle GPU-hours")
def namespace_efficiency_endpoint(session: SessionDep, principal: CurrentPrincipal, period: Period):
    """Allocated GPU-hours from the namespace's pods' requests (MIG instances by compute fraction);
    measured and used from the utilisation of the GPUs its pods held (exporter pod labels)."""
    return namespace_efficiency(session, principal, *period_bounds(parse_period(period, allow_future=True)))


# --- price cards ---------------------------------------------------------------------------------

@router.get("/price-cards", response_model=list[card_service.PriceCardPublic], tags=["price cards"], summary="List price cards")
def list_cards_endpoint(session: SessionDep, principal: CurrentPrincipal, sku: str | None = None):
    """Every price card, by SKU and start."""
    return card_service.list_cards(session, sku=sku)


@router.post("/price-cards", response_model=card_service.PriceCardPublic, status_code=201, tags=["price cards"],
             summary="Add a price card (infra-admin, finance)")
def create_card_endpoint(data: card_service.PriceCardCreate, session: SessionDep, principal: CurrentPrincipal):
    """409 when it overlaps a card of the same SKU, or covers a finalised period."""
    return card_service.create_card(session, principal, data)


@router.post("/price-cards/import", response_model=list[card_service.PriceCardPublic], status_code=201, tags=["price cards"],
             summary="Import price cards from CSV (infra-admin, finance)")
def import_cards_endpoint(
    session: SessionDep, principal: CurrentPrincipal,
    text: Annotated[str, Body(media_type="text/csv", description="sku,unit,unit_price,currency,effective_from[,effective_to]")],
):
    """All rows or none: 422 listing every bad row."""
    return card_service.import_cards(session, principal, text)


@router.get("/price-cards/{card_id}", response_model=card_service.PriceCardPublic, tags=["price cards"], summary="Read a price card")
def read_card_endpoint(card_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """One price card."""
    return card_service.get_card(session, card_id)


@router.patch("/price-cards/{card_id}", response_model=card_service.PriceCardPublic, tags=["price cards"],
              summary="End (or reopen) a price card (infra-admin, finance)")
def update_card_endpoint(card_id: RowId, data: card_service.PriceCardUpdate, session: SessionDep, principal: CurrentPrincipal):
    """Only `effective_to` changes; prices never do (end the card, add a new one)."""
    return card_service.update_card(session, principal, card_id, data)


@router.delete("/price-cards/{card_id}", status_code=204, tags=["price cards"], summary="Delete an unused price card")
def delete_card_endpoint(card_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> Response:
    """409 when the card priced a finalised period."""
    card_service.delete_card(session, principal, card_id)
    return Response(status_code=204)


# --- discounts -----------------------------------------------------------------------------------

@router.get("/discounts", response_model=list[discount_service.DiscountPublic], tags=["discounts"], summary="List discounts")
def list_discounts_endpoint(session: SessionDep, principal: CurrentPrincipal):
    """Contract discounts of your tenants (all for global roles)."""
    return discount_service.to_public(session, discount_service.list_discounts(session, principal))


@router.post("/discounts", response_model=discount_service.DiscountPublic, status_code=201, tags=["discounts"],
             summary="Give a tenant a contract discount (infra-admin, finance)")
def create_discount_endpoint(data: discount_service.DiscountCreate, session: SessionDep, principal: CurrentPrincipal):
    """One discount per tenant."""
    return discount_service.to_public(session, [discount_service.create_discount(session, principal, data)])[0]


@router.get("/discounts/{discount_id}", response_model=discount_service.DiscountPublic, tags=["discounts"], summary="Read a discount")
def read_discount_endpoint(discount_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """One discount; 404 when it is not your tenant's."""
    return discount_service.to_public(session, [discount_service.get_discount(session, principal, discount_id)])[0]


@router.patch("/discounts/{discount_id}", response_model=discount_service.DiscountPublic, tags=["discounts"],
              summary="Change a discount")
def update_discount_endpoint(
    discount_id: RowId, data: discount_service.DiscountUpdate, session: SessionDep, principal: CurrentPrincipal,
):
    """New percent or note; draft bills use it from their next run."""
    return discount_service.to_public(session, [discount_service.update_discount(session, principal, discount_id, data)])[0]


@router.delete("/discounts/{discount_id}", status_code=204, tags=["discounts"], summary="Remove a discount")
def delete_discount_endpoint(discount_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> Response:
    """Remove a discount."""
    discount_service.delete_discount(session, principal, discount_id)
    return Response(status_code=204)


def _json(models: list[BaseModel]) -> Response:
    """A list of models (already validated as they were built) as the response's JSON, the same bytes
    FastAPI would send: its `response_model` validates thousands of rows (2,000 bills, 4,000 alerts) again."""
    return Response(to_json(models), media_type="application/json")


# --- bills ---------------------------------------------------------------------------------------

@router.get("/bills", response_model=list[views.BillPublic], tags=["bills"], summary="List bills")
def list_bills_endpoint(
    session: SessionDep, principal: CurrentPrincipal, period: str | None = None, tenant: str | None = None,
    status: Literal["draft", "finalised"] | None = None,
):
    """Your tenants' bills (all for global roles), newest period first."""
    if period is not None:
        parse_period(period, allow_future=True)
    found = views.list_bills(session, principal, period=period, tenant_id=_tenant_id(session, tenant), status=status)
    return _json(views.bill_public(session, found))


@router.post("/bills/run", response_model=RunResult, tags=["bills"], summary="Build usage and draft bills (infra-admin, finance)")
def run_bills_endpoint(data: RunRequest, request: Request, session: SessionDep, principal: CurrentPrincipal):
    """Rebuild the period's usage, re-rate it, rewrite drafts, correct finalised bills; then check budgets."""
    settings = _settings(request)
    summary = bill_service.run_period(session, principal, data.period, policy=settings.idle_cost_policy)
    budget_service.check_alerts(session, principal, data.period, carbon=budget_service.CarbonContext.of(settings))
    budget_service.deliver_alerts(session, settings.budget_webhook_url, settings.budget_webhook_timeout)
    return RunResult(period=summary.period, usage_rows=summary.usage_rows, bills=views.bill_public(session, summary.drafts),
                     corrections=summary.corrections, idle_cost=str(summary.idle_cost))


@router.post("/bills/finalize", response_model=list[views.BillPublic], tags=["bills"], summary="Finalise a period's bills")
def finalise_endpoint(data: FinaliseRequest, request: Request, session: SessionDep, principal: CurrentPrincipal):
    """Finalise every draft of an ended period (or one tenant's); 409 when already finalised."""
    done = bill_service.finalise_period(session, principal, data.period, policy=_settings(request).idle_cost_policy,
                                        tenant=data.tenant)
    return views.bill_public(session, done)


@router.get("/bills/idle", response_model=list[views.IdleChargePublic], tags=["bills"], summary="Idle capacity of a period")
def idle_endpoint(session: SessionDep, principal: CurrentPrincipal, period: Period):
    """Capacity nobody used, priced at list (infra-admin and finance)."""
    principal.require_role(Role.INFRA_ADMIN, Role.FINANCE, action="see the fleet's idle cost")
    return views.idle_charges(session, parse_period(period, allow_future=True))


@router.get("/bills/{bill_id}", response_model=views.BillDetail, tags=["bills"], summary="Read a bill with its lines")
def read_bill_endpoint(bill_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """One bill; 404 when it is not your tenant's."""
    return views.bill_public(session, [bill_service.get_bill_for(session, principal, bill_id)], with_lines=True)[0]


@router.get("/bills/{bill_id}/lines", response_model=list[views.BillLinePublic], tags=["bills"], summary="A bill's lines")
def bill_lines_endpoint(bill_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """Usage lines, idle shares and corrections."""
    bill = bill_service.get_bill_for(session, principal, bill_id)
    return [views.line_public(line) for line in views.lines_of(session, bill.id)]


@router.get("/bills/{bill_id}/lines/{line_id}/usage", response_model=list[views.UsagePublic], tags=["bills"],
            summary="Drill down: the usage records behind a bill line")
def line_usage_endpoint(
    bill_id: RowId, line_id: RowId, session: SessionDep, principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000, offset: Annotated[int, Query(ge=0)] = 0,
):
    """The node-hours, GPU-hours, request-hours or kWh (hourly, per resource) the line was rated from."""
    return views.usage_public(session, views.line_usage(session, principal, bill_id, line_id, limit=limit, offset=offset))


# --- budgets -------------------------------------------------------------------------------------

@router.get("/budgets", response_model=list[budget_service.BudgetPublic], tags=["budgets"], summary="List budgets")
def list_budgets_endpoint(session: SessionDep, principal: CurrentPrincipal):
    """Budgets of your tenants (all for global roles)."""
    return _json(budget_service.to_public(session, budget_service.list_budgets(session, principal)))


@router.post("/budgets", response_model=budget_service.BudgetPublic, status_code=201, tags=["budgets"], summary="Create a budget")
def create_budget_endpoint(data: budget_service.BudgetCreate, session: SessionDep, principal: CurrentPrincipal):
    """Infra-admin, finance, or a tenant admin for their own tenant."""
    return budget_service.to_public(session, [budget_service.create_budget(session, principal, data)])[0]


@router.get("/budgets/alerts", response_model=list[budget_service.AlertPublic], tags=["budgets"], summary="Raised alerts")
def alerts_endpoint(session: SessionDep, principal: CurrentPrincipal, period: str | None = None):
    """Budget and GPU-hours quota alerts of your tenants, newest first, with delivery status."""
    return _json(budget_service.alerts_public(session, budget_service.list_alerts(session, principal, period)))


@router.get("/budgets/{budget_id}", response_model=budget_service.BudgetPublic, tags=["budgets"], summary="Read a budget")
def read_budget_endpoint(budget_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """One budget; 404 when it is not your tenant's."""
    return budget_service.to_public(session, [budget_service.get_budget(session, principal, budget_id)])[0]


@router.patch("/budgets/{budget_id}", response_model=budget_service.BudgetPublic, tags=["budgets"], summary="Change a budget")
def update_budget_endpoint(budget_id: RowId, data: budget_service.BudgetUpdate, session: SessionDep, principal: CurrentPrincipal):
    """New name, amount or thresholds."""
    return budget_service.to_public(session, [budget_service.update_budget(session, principal, budget_id, data)])[0]


@router.delete("/budgets/{budget_id}", status_code=204, tags=["budgets"], summary="Delete a budget")
def delete_budget_endpoint(budget_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> Response:
    """Delete a budget and its alerts."""
    budget_service.delete_budget(session, principal, budget_id)
    return Response(status_code=204)


# --- exports -------------------------------------------------------------------------------------

def _stream(handle) -> Iterator[bytes]:
    with handle:
        handle.seek(0)
        while chunk := handle.read(CHUNK):
            yield chunk


@router.get("/exports/focus", tags=["exports"], summary="FOCUS 1.2 export of a period (CSV or Parquet)",
            response_class=StreamingResponse)
def focus_endpoint(
    request: Request, session: SessionDep, principal: CurrentPrincipal, period: Period,
    format: Literal["csv", "parquet"] = "csv",
) -> StreamingResponse:
    """Every bill line of the period you may see as a FOCUS row; 404 for a period without bills."""
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    exports.export_focus(session, principal, period, format, spool, _settings(request).billing_account_name,
                         _settings(request).carbon_zone)
    media = "text/csv; charset=utf-8" if format == "csv" else "application/vnd.apache.parquet"
    filename = f"kiln-focus-{period}.{format}"
    return StreamingResponse(_stream(spool), media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/exports/chargeback", tags=["exports"], summary="Chargeback CSV per cost centre",
            response_class=StreamingResponse)
def chargeback_endpoint(request: Request, session: SessionDep, principal: CurrentPrincipal, period: Period) -> StreamingResponse:
    """Lines per cost centre, tenant and SKU with subtotals per cost centre and a grand total."""
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    exports.export_chargeback(session, principal, period, spool, _settings(request).billing_account_name)
    return StreamingResponse(_stream(spool), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="kiln-chargeback-{period}.csv"'})
