"""Small factories: tenants and callers of each role, made through Kiln's own services."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from sqlmodel import Session

from kiln.auth import Principal
from kiln.models import Tenant, User
from kiln.roles import Role
from kiln.tenants import TenantCreate, create_tenant
from kiln.tokens import issue_token
from kiln.users import UserCreate, create_user

_counter = itertools.count()


@dataclass
class Caller:
    """A user with a valid bearer token."""

    user: User
    token: str

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header for this caller."""
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class World:
    """Tenants `a` and `b`, and callers: admin, finance, a_admin, a_member, b_admin, b_member."""

    session: Session
    a: Tenant
    b: Tenant
    callers: dict[str, Caller] = field(default_factory=dict)

    @classmethod
    def build(cls, session: Session) -> World:
        """Create the tenants and callers and commit them."""
        system = Principal.system("test")
        world = cls(
            session,
            create_tenant(session, system, TenantCreate(slug="tenant-a", name="Tenant A")),
            create_tenant(session, system, TenantCreate(slug="tenant-b", name="Tenant B")),
        )
        world.callers["admin"] = world.make_caller(Role.INFRA_ADMIN)
        world.callers["finance"] = world.make_caller(Role.FINANCE)
        for slug, tenant in (("a", world.a), ("b", world.b)):
            world.callers[f"{slug}_admin"] = world.make_caller(Role.TENANT_ADMIN, [tenant.slug])
            world.callers[f"{slug}_member"] = world.make_caller(Role.TENANT_MEMBER, [tenant.slug])
        session.commit()
        return world

    def make_caller(self, role: Role, tenants: list[str] | None = None, days: int = 1) -> Caller:
        """A new user with this role and tenants, and a token valid for `days`."""
        system = Principal.system("test")
        username = f"{role.value}-{next(_counter)}"
        user = create_user(self.session, system, UserCreate(username=username, role=role, tenants=tenants or []))
        token = issue_token(self.session, system, user, days=days).token
        self.session.commit()
        return Caller(user, token)

    def headers(self, name: str) -> dict[str, str]:
        """Authorization header of caller `name` (e.g. `a_member`)."""
        return self.callers[name].headers

    def tenant(self, name: str) -> Tenant:
        """Tenant `a` or `b`."""
        return {"a": self.a, "b": self.b}[name]
