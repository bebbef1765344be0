"""The audit log: who did what to which object, when, and from where. Append-only."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlmodel import Session, col, select

from kiln.auth import Principal

if TYPE_CHECKING:  # kiln.models is loaded by the functions below: importing this module is cheap
    from kiln.models import AuditEvent


def record(
    session: Session,
    principal: Principal,
    action: str,
    object_type: str,
    object_id: object,
    *,
    tenant_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add an audit event to the caller's transaction (it commits or rolls back with the change).

    `detail` must never carry secrets; callers pass field names, not values, for those.
    """
    from kiln.models import AuditEvent

    session.add(
        AuditEvent(
            actor=principal.username,
            action=action,
            object_type=object_type,
            object_id=str(object_id),
            tenant_id=tenant_id,
            source=principal.source,
            detail=detail or {},
        )
    )


class AuditEventPublic(BaseModel):
    """An audit event as the API returns it."""

    id: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    tenant_id: int | None
    source: str
    detail: dict[str, Any]


def list_events(
    session: Session, principal: Principal, *, object_type: str | None = None, limit: int = 100, before_id: int | None = None
) -> list[AuditEvent]:
    """Newest-first audit events visible to the caller (tenant events to that tenant's admins)."""
    from kiln.models import AuditEvent

    statement = select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(limit)
    statement = principal.scope(statement, AuditEvent.tenant_id)
    if object_type:
        statement = statement.where(AuditEvent.object_type == object_type)
    if before_id:
        statement = statement.where(col(AuditEvent.id) < before_id)
    return list(session.exec(statement).all())
