"""Per-tenant contract discounts: percent off list prices (FOCUS ListCost vs ContractedCost).

A draft bill uses the tenant's discount at the time it is run; a finalised bill keeps the
discount it was finalised with. Infra-admins and finance set discounts; tenants read their own.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import Session, select

from kiln import audit
from kiln.auth import Principal
from kiln.errors import Conflict
from kiln.models import Tenant
from kiln.roles import Role
from kiln.tenants import Slug, get_tenant_owned, visible_tenant
from metering.models import TenantDiscount
from metering.money import parse_decimal, plain

WRITE_ROLES = (Role.INFRA_ADMIN, Role.FINANCE)


def _percent(value: Any) -> Decimal:
    percent = parse_decimal(value, "percent", places=6)
    if percent > 100:
        raise ValueError(f"percent {value!r} must be at most 100")
    return percent


class DiscountCreate(BaseModel):
    """A tenant's contract discount."""

    model_config = ConfigDict(extra="forbid")

    tenant: Slug
    percent: Decimal = Field(description="Percent off list prices, 0–100, up to 6 decimal places.")
    note: str = Field(default="", max_length=500)

    _check = field_validator("percent", mode="before")(lambda cls, v: _percent(v))


class DiscountUpdate(BaseModel):
    """A new percent or note."""

    model_config = ConfigDict(extra="forbid")

    percent: Decimal | None = None
    note: str | None = Field(default=None, max_length=500)

    _check = field_validator("percent", mode="before")(lambda cls, v: None if v is None else _percent(v))


class DiscountPublic(BaseModel):
    """A discount as the API returns it."""

    id: int
    tenant: str
    percent: Decimal
    note: str


def to_public(session: Session, discounts: list[TenantDiscount]) -> list[DiscountPublic]:
    """Discounts with tenant slugs."""
    slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
    return [DiscountPublic(id=d.id, tenant=slugs.get(d.tenant_id, "?"), percent=plain(d.percent), note=d.note) for d in discounts]


def list_discounts(session: Session, principal: Principal) -> list[TenantDiscount]:
    """Discounts of the caller's tenants."""
    return list(session.exec(principal.scope(select(TenantDiscount).order_by(TenantDiscount.id), TenantDiscount.tenant_id)).all())


def get_discount(session: Session, principal: Principal, discount_id: int) -> TenantDiscount:
    """One discount of the caller's tenants; NotFound otherwise."""
    return get_tenant_owned(session, principal, TenantDiscount, discount_id, "discount")


def create_discount(session: Session, principal: Principal, data: DiscountCreate) -> TenantDiscount:
    """Give a tenant a discount (one per tenant; Conflict when it has one)."""
    tenant = visible_tenant(session, principal, data.tenant)
    principal.require_role(*WRITE_ROLES, action="set discounts")
    if session.exec(select(TenantDiscount).where(TenantDiscount.tenant_id == tenant.id)).first():
        raise Conflict(f"tenant '{tenant.slug}' already has a discount: change that one")
    discount = TenantDiscount(tenant_id=tenant.id, percent=data.percent, note=data.note)
    session.add(discount)
    session.flush()
    audit.record(session, principal, "create", "discount", discount.id, tenant_id=tenant.id, detail={"percent": str(data.percent)})
    return discount


def update_discount(session: Session, principal: Principal, discount_id: int, data: DiscountUpdate) -> TenantDiscount:
    """Change a discount's percent or note (applies to draft bills from their next run)."""
    discount = get_discount(session, principal, discount_id)
    principal.require_role(*WRITE_ROLES, action="set discounts")
    discount.sqlmodel_update({k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None})
    session.add(discount)
    session.flush()
    audit.record(session, principal, "update", "discount", discount.id, tenant_id=discount.tenant_id,
                 detail={"percent": str(discount.percent)})
    return discount


def delete_discount(session: Session, principal: Principal, discount_id: int) -> None:
    """Remove a discount."""
    discount = get_discount(session, principal, discount_id)
    principal.require_role(*WRITE_ROLES, action="set discounts")
    audit.record(session, principal, "delete", "discount", discount.id, tenant_id=discount.tenant_id)
    session.delete(discount)
    session.flush()
