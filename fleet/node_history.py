"""What of a node's history a caller may see: everything for global roles; for a tenant, what
was written since its current lease began (and was recorded), without who did it.

The console's node page and `GET /api/v1/nodes/{id}/events` both read it through here, so a
tenant sees the same history either way and never the node's life with an earlier holder."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from fleet import leases as lease_service
from fleet.models import NodeEvent
from fleet.tenancy_schemas import LeasePublic
from kiln.auth import Principal
from kiln.db import utcnow


def current_lease(session: Session, principal: Principal, node_id: int) -> LeasePublic | None:
    """The node's active lease as the caller may see it (a tenant's own), or None."""
    leases = lease_service.list_leases(session, principal, node_id=node_id, active=True)
    return lease_service.to_public(session, leases[:1])[0] if leases else None


def history_window(principal: Principal, lease: LeasePublic | None) -> datetime | None:
    """Where the caller's view of the node's history begins: nowhere for infra admins (None);
    for a tenant, when its lease both began and was recorded (a backdated lease must not reveal
    what was written while the node was still another tenant's), or now when it has none."""
    if principal.sees_all_tenants:
        return None
    return max(lease.starts_at, lease.created_at) if lease else utcnow()


def visible_events(session: Session, principal: Principal, node_id: int, limit: int,
                   lease: LeasePublic | None = None) -> list[NodeEvent]:
    """The node's events the caller may see, newest first (at most `limit`); for tenants the
    actor is blanked. `lease`: the caller's current lease of the node, when already read."""
    statement = select(NodeEvent).where(NodeEvent.node_id == node_id).order_by(col(NodeEvent.id).desc()).limit(limit)
    if not principal.sees_all_tenants:
        lease = lease or current_lease(session, principal, node_id)
        if lease is None:
            return []
        statement = statement.where(NodeEvent.at >= history_window(principal, lease))
    events = list(session.exec(statement).all())
    if not principal.sees_all_tenants:
        events = [NodeEvent(**{**e.model_dump(), "actor": ""}) for e in events]  # copies: nothing to flush back
    return events
