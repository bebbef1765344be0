"""The four roles of Kiln and what each may see."""

from enum import StrEnum


class Role(StrEnum):
    """A caller's role. Global roles see every tenant; tenant roles see their own tenants only."""

    INFRA_ADMIN = "infra-admin"
    FINANCE = "finance"
    TENANT_ADMIN = "tenant-admin"
    TENANT_MEMBER = "tenant-member"


GLOBAL_ROLES = frozenset({Role.INFRA_ADMIN, Role.FINANCE})
TENANT_ROLES = frozenset({Role.TENANT_ADMIN, Role.TENANT_MEMBER})

# Most privileged first: used to pick one role when an identity provider grants several.
PRECEDENCE = (Role.INFRA_ADMIN, Role.FINANCE, Role.TENANT_ADMIN, Role.TENANT_MEMBER)
