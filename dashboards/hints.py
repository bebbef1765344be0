"""Setup hints by role: settings, commands and URLs are for the people who run Kiln (infra admins);
finance and tenant users read what is the case and whom to ask, never configuration internals."""

from __future__ import annotations

from kiln.auth import Principal
from kiln.roles import Role


def for_role(principal: Principal, everyone: str, admins: str) -> str:
    """`everyone`, and for infra admins `admins` after it (the setup hint)."""
    return f"{everyone} {admins}" if principal.role == Role.INFRA_ADMIN else everyone
