"""Data for the finance page: every tenant's charges in a period, idle cost, reconciliation with
OpenCost, and closing a period.

Finance and infra admins see all tenants (`Principal.sees_all_tenants`); the functions still
scope every query to the caller, so a tenant role calling them sees only its own. Totals come
from the bills as metering wrote them (summed in SQL, one row per tenant), idle cost from
`metering.views.idle_charges`, request-hours from `metering.reconcile.reconcile`, Kiln's cost
of a namespace from `metering.rating.rate` over its Kubernetes usage, and closing a period is
`metering.bills.finalise_period`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func
from sqlmodel import Session, col, select

from collectors.models import K8sAllocation, OpenCostAllocation
from dashboards.cost_data import caller_scope, remembered
from kiln.auth import Principal
from kiln.models import Tenant
from kiln.roles import Role
from metering import views
from metering.bills import DRAFT, FINALISED, billing_currency, card_views, finalise_period
from metering.models import Bill, UsageDay
from metering.money import round_amount
from metering.periods import has_ended, period_bounds
from metering.price_cards import cards_overlapping
from metering.reconcile import reconcile

FINANCE_ROLES = (Role.INFRA_ADMIN, Role.FINANCE)
ZERO = Decimal(0)


@dataclass(frozen=True)
class TenantCharge:
    """One tenant's bill of a period."""

    bill_id: int
    tenant: str
    tenant_name: str
    cost_centre: str
    status: str
    currency: str
    list_total: Decimal
    total: Decimal


def tenant_charges(session: Session, principal: Principal, period: str) -> list[TenantCharge]:
    """Every visible tenant's bill of the period, largest total first (one query)."""
    statement = (
        select(Bill.id, Tenant.slug, Tenant.name, Tenant.cost_centre, Bill.status, Bill.currency, Bill.list_total, Bill.total)
        .join(Tenant, col(Tenant.id) == Bill.tenant_id)
        .where(Bill.period == period)
    )
    rows = [TenantCharge(bill_id, slug, name, centre or slug, status, currency,
                         round_amount(Decimal(listed), currency), round_amount(Decimal(total), currency))
            for bill_id, slug, name, centre, status, currency, listed, total
            in session.exec(principal.scope(statement, Bill.tenant_id)).all()]
    return sorted(rows, key=lambda r: (-r.total, r.tenant))


def status_counts(charges: list[TenantCharge]) -> dict[str, int]:
    """How many of the bills are draft and how many finalised."""
    return {DRAFT: sum(c.status == DRAFT for c in charges), FINALISED: sum(c.status == FINALISED for c in charges)}


def idle_by_sku(session: Session, principal: Principal, period: str) -> dict[str, Decimal]:
    """The period's idle capacity cost per SKU (global roles only: it is the operator's figure)."""
    if not principal.sees_all_tenants:
        return {}
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for charge in views.idle_charges(session, period):
        totals[charge.sku] += Decimal(charge.cost)
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


@dataclass(frozen=True)
class Reconciliation:
    """One namespace: Kiln's cost of its Kubernetes usage beside OpenCost's total, and request-hours."""

    namespace: str
    tenant: str | None
    kiln_cost: Decimal
    opencost_cost: Decimal | None
    difference: Decimal | None
    kiln_gpu_hours: Decimal
    opencost_gpu_hours: Decimal | None


def _kiln_costs(session: Session, principal: Principal, period: str) -> tuple[dict[str, Decimal], str]:
    """Kiln's billed cost of each namespace's Kubernetes usage in the period: the namespace's share of
    its tenant's usage lines, as the last bills run kept it per day (`metering.usage_days`)."""
    start, end = period_bounds(period)
    currency = billing_currency(session, card_views(cards_overlapping(session, start, end)))
    statement = (select(UsageDay.namespace, func.sum(UsageDay.contracted_cost))
                 .where(UsageDay.period == period, UsageDay.namespace != "").group_by(UsageDay.namespace))
    rows = session.exec(principal.scope(statement, UsageDay.tenant_id)).all()
    return {namespace: Decimal(cost) for namespace, cost in rows}, currency


def reconciliation(session: Session, principal: Principal, period: str) -> tuple[list[Reconciliation], str]:
    """Per namespace: Kiln's cost and GPU-hours beside OpenCost's (None where OpenCost has no row); the currency.

    Kiln's figures are the days the last bills run kept (`metering.usage_days`); the namespaces'
    owners come from the Kubernetes allocations, so the result is remembered until the next bills
    run, a price card change, or new OpenCost figures for the period."""
    start, end = period_bounds(period)
    cards = tuple(card_views(cards_overlapping(session, start, end)))
    window = (col(OpenCostAllocation.window_start) >= start, col(OpenCostAllocation.window_end) <= end)
    opencost = tuple(session.exec(select(func.count(), func.max(OpenCostAllocation.id), func.sum(OpenCostAllocation.total_cost),
                                         func.sum(OpenCostAllocation.gpu_hours)).where(*window)).one())
    return remembered(session, "reconciliation", period, (caller_scope(principal), cards, opencost),
                      lambda: _reconcile(session, principal, period))


def _reconcile(session: Session, principal: Principal, period: str) -> tuple[list[Reconciliation], str]:
    start, end = period_bounds(period)
    kiln, currency = _kiln_costs(session, principal, period)
    hours = {(r.namespace, r.measure): r for r in reconcile(session, principal, period)}
    tenants = dict(session.exec(select(Tenant.slug, Tenant.id)).all())
    owners = {ns: slug for ns, slug in session.exec(select(K8sAllocation.namespace, K8sAllocation.tenant_slug).distinct()).all()
              if slug in tenants}
    statement = (select(OpenCostAllocation.namespace, func.sum(OpenCostAllocation.total_cost))
                 .where(col(OpenCostAllocation.window_start) >= start, col(OpenCostAllocation.window_end) <= end)
                 .group_by(OpenCostAllocation.namespace))
    theirs = {}
    for namespace, total in session.exec(statement).all():
        owner = owners.get(namespace)
        if principal.sees_all_tenants or (owner is not None and tenants[owner] in principal.tenant_ids):
            theirs[namespace] = Decimal(total)
    rows = []
    for namespace in sorted(set(kiln) | set(theirs) | {ns for ns, _ in hours}):
        ours, other = round_amount(kiln.get(namespace, ZERO), currency), theirs.get(namespace)
        gpu = hours.get((namespace, "gpu-hours"))
        rows.append(Reconciliation(
            namespace=namespace, tenant=owners.get(namespace), kiln_cost=ours,
            opencost_cost=None if other is None else round_amount(other, currency),
            difference=None if other is None else ours - round_amount(other, currency),
            kiln_gpu_hours=gpu.kiln if gpu else ZERO, opencost_gpu_hours=gpu.opencost if gpu else None))
    return rows, currency


def closable(session: Session, period: str) -> tuple[bool, str]:
    """Whether the period can be closed now, and a sentence saying why not (or what closing does)."""
    if not has_ended(period):
        return False, f"{period} has not ended yet: it can be closed from {period_bounds(period)[1]:%Y-%m-%d} on."
    drafts = session.exec(select(func.count()).select_from(Bill).where(Bill.period == period, Bill.status == DRAFT)).one()
    if not drafts:
        return False, f"Every bill of {period} is finalised (or there are none)."
    return True, (f"Closing {period} re-rates its usage one last time and finalises {drafts} draft bill(s); "
                  "they cannot change afterwards.")


def close_period(session: Session, principal: Principal, period: str, policy: str) -> list[Bill]:
    """Finalise every draft bill of an ended period (finance and infra admins); metering's checks apply."""
    principal.require_role(*FINANCE_ROLES, action="close a billing period")
    return finalise_period(session, principal, period, policy=policy)
