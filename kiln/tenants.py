"""Tenants: the customers of the fleet. Infra admins manage them; tenant users see their own."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, func, select

from kiln import audit
from kiln.auth import Principal
from kiln.errors import Conflict, NotFound
from kiln.models import Membership, Tenant
from kiln.roles import Role

TenantOwned = TypeVar("TenantOwned")  # a table model with a `tenant_id`

SLUG_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
Slug = Annotated[
    str,
    Field(pattern=SLUG_PATTERN, description="Lower-case letters, digits and inner hyphens, at most 63 characters."),
]


class TenantCreate(BaseModel):
    """Fields to create a tenant; `name` defaults to the slug."""

    model_config = ConfigDict(extra="forbid")

    slug: Slug
    name: str | None = Field(default=None, min_length=1, max_length=200)
    cost_centre: str | None = Field(default=None, max_length=64, description="Finance cost centre for chargeback.")
    description: str = Field(default="", max_length=2000)


class TenantUpdate(BaseModel):
    """Fields of a tenant that can change (the slug is permanent)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    cost_centre: str | None = Field(default=None, max_length=64)
    description: str | None = Field(default=None, max_length=2000)


class TenantPublic(BaseModel):
    """A tenant as the API returns it."""

    id: int
    slug: str
    name: str
    cost_centre: str | None
    description: str
    created_at: datetime


def list_tenants(session: Session, principal: Principal) -> list[Tenant]:
    """Tenants the caller may see, by slug."""
    statement = principal.scope(select(Tenant).order_by(Tenant.slug), Tenant.id)
    return list(session.exec(statement).all())


def get_tenant(session: Session, principal: Principal, tenant_id: int) -> Tenant:
    """One tenant the caller may see; NotFound otherwise."""
    principal.require_tenant(tenant_id, f"tenant {tenant_id}")
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant


def visible_tenant(session: Session, principal: Principal, slug: str) -> Tenant:
    """The tenant with `slug` if the caller may see it; NotFound ("no such tenant") otherwise,
    the same answer for a tenant that exists but is someone else's."""
    tenant = session.exec(select(Tenant).where(Tenant.slug == slug)).first()
    if tenant is None or not principal.can_see(tenant.id):
        raise NotFound(f"no such tenant: {slug}")
    return tenant


def get_tenant_owned(session: Session, principal: Principal, model: type[TenantOwned], object_id: int,
                     noun: str) -> TenantOwned:
    """Row `object_id` of `model` if it belongs to one of the caller's tenants; NotFound
    ("<noun> <id> not found") otherwise, the same answer for another tenant's row."""
    row = session.get(model, object_id)
    if row is None or not principal.can_see(row.tenant_id):
        raise NotFound(f"{noun} {object_id} not found")
    return row


def tenants_by_slug(session: Session, slugs: list[str]) -> list[Tenant]:
    """The tenants with these slugs, in the same order; NotFound naming every unknown slug."""
    found = {t.slug: t for t in session.exec(select(Tenant).where(Tenant.slug.in_(slugs))).all()}
    missing = [s for s in slugs if s not in found]
    if missing:
        raise NotFound(f"no such tenant: {', '.join(missing)} (see `kiln tenants list`)")
    return [found[s] for s in slugs]


def create_tenant(session: Session, principal: Principal, data: TenantCreate) -> Tenant:
    """Create a tenant (infra-admin only); Conflict when the slug is taken."""
    principal.require_role(Role.INFRA_ADMIN, action="create tenants")
    if session.exec(select(Tenant).where(Tenant.slug == data.slug)).first():
        raise Conflict(f"a tenant with slug '{data.slug}' already exists")
    tenant = Tenant(**data.model_dump(exclude={"name"}), name=data.name or data.slug)
    session.add(tenant)
    session.flush()
    audit.record(session, principal, "create", "tenant", tenant.id, tenant_id=tenant.id, detail={"slug": tenant.slug})
    return tenant


def update_tenant(session: Session, principal: Principal, tenant_id: int, data: TenantUpdate) -> Tenant:
    """Change a tenant's name, cost centre or description (infra-admin only)."""
    tenant = get_tenant(session, principal, tenant_id)
    principal.require_role(Role.INFRA_ADMIN, action="change tenants")
    changes = data.model_dump(exclude_unset=True)
    tenant.sqlmodel_update(changes)
    session.add(tenant)
    session.flush()
    audit.record(session, principal, "update", "tenant", tenant.id, tenant_id=tenant.id, detail={"fields": sorted(changes)})
    return tenant


def delete_tenant(session: Session, principal: Principal, tenant_id: int) -> None:
    """Delete a tenant that has no members left (infra-admin only)."""
    tenant = get_tenant(session, principal, tenant_id)
    principal.require_role(Role.INFRA_ADMIN, action="delete tenants")
    members = session.exec(select(func.count()).select_from(Membership).where(Membership.tenant_id == tenant_id)).one()
    if members:
        raise Conflict(f"tenant '{tenant.slug}' still has {members} member(s): remove or move them first")
    audit.record(session, principal, "delete", "tenant", tenant.id, tenant_id=tenant.id, detail={"slug": tenant.slug})
    session.delete(tenant)
    session.flush()
