"""`/api/v1/audit-events`: read the audit log."""

from typing import Annotated

from fastapi import APIRouter, Query

from kiln.audit import AuditEventPublic, list_events
from kiln.api.deps import CurrentPrincipal, RowId, SessionDep
from kiln.roles import Role

router = APIRouter(prefix="/api/v1/audit-events", tags=["audit"])


@router.get("", response_model=list[AuditEventPublic], summary="Read the audit log, newest first")
def list_endpoint(
    session: SessionDep,
    principal: CurrentPrincipal,
    object_type: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: RowId | None = None,
):
    """Infra-admins and finance see every event; tenant admins their tenants' events."""
    principal.require_role(Role.INFRA_ADMIN, Role.FINANCE, Role.TENANT_ADMIN, action="read the audit log")
    return list_events(session, principal, object_type=object_type, limit=limit, before_id=before_id)
