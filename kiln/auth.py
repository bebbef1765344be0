"""Who is calling, and which tenants they may see: the one place tenancy is decided.

Every endpoint takes `CurrentPrincipal` (kiln.api.deps); every query that returns tenant data goes through
`Principal.scope()` or `Principal.require_tenant()`. Objects of a tenant the caller cannot
see are reported as not found (404), never as forbidden, so their existence does not leak.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import ColumnElement
from sqlmodel import Session, select

from kiln.errors import Forbidden, NotFound
from kiln.roles import GLOBAL_ROLES, Role

if TYPE_CHECKING:  # kiln.models is loaded where it is used: `kiln nodes list` needs no user table
    from kiln.models import User

Statement = TypeVar("Statement")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name for the audit log, a role, and the tenants it may see."""

    username: str
    role: Role
    tenant_ids: frozenset[int] = field(default_factory=frozenset)
    user_id: int | None = None
    source: str = ""
    read_only: bool = False  # an API token of scope `read`: the caller may not change anything

    @classmethod
    def system(cls, source: str = "cli") -> Principal:
        """The local operator using the CLI on the appliance itself: acts as infra-admin."""
        return cls(username=f"{source}:{getpass.getuser()}", role=Role.INFRA_ADMIN, source=source)

    @property
    def sees_all_tenants(self) -> bool:
        """Global roles (infra-admin, finance) see every tenant."""
        return self.role in GLOBAL_ROLES

    def can_see(self, tenant_id: int | None) -> bool:
        """Whether objects of `tenant_id` are visible (tenant-less objects only to global roles)."""
        return self.sees_all_tenants or (tenant_id is not None and tenant_id in self.tenant_ids)

    def scope(self, statement: Statement, tenant_column: ColumnElement[Any] | Any) -> Statement:
        """Restrict a SELECT to rows of the caller's tenants (unchanged for global roles)."""
        if self.sees_all_tenants:
            return statement
        return statement.where(tenant_column.in_(sorted(self.tenant_ids)))  # type: ignore[attr-defined]

    def require_tenant(self, tenant_id: int | None, what: str) -> None:
        """NotFound (not Forbidden) unless the caller may see objects of `tenant_id`."""
        if not self.can_see(tenant_id):
            raise NotFound(f"{what} not found")

    def require_role(self, *roles: Role, action: str) -> None:
        """Forbidden unless the caller has one of `roles`; `action` completes 'role X may not ...'."""
        if self.role not in roles:
            raise Forbidden(f"role {self.role.value} may not {action}")


def principal_for_user(session: Session, user: User, source: str = "") -> Principal:
    """The principal of a local user, with the tenants of their memberships."""
    from kiln.models import Membership

    tenant_ids = session.exec(select(Membership.tenant_id).where(Membership.user_id == user.id)).all()
    return Principal(
        username=user.username, role=Role(user.role), tenant_ids=frozenset(tenant_ids), user_id=user.id, source=source
    )
