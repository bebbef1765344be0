"""`/api/v1/vdcs`, `/api/v1/leases` and `/api/v1/gpu-instance-leases`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlmodel import Session, select

from fleet import instance_leases as instance_service
from fleet import leases as lease_service
from fleet import vdcs as vdc_service
from fleet.models import Node
from fleet.tenancy_schemas import (
    GpuInstanceLeaseCreate,
    GpuInstanceLeasePublic,
    LeaseCreate,
    LeasePublic,
    LeaseUpdate,
    VdcCreate,
    VdcPublic,
    VdcUpdate,
)
from kiln.api.deps import CurrentPrincipal, RowId, SessionDep
from kiln.models import Tenant

router = APIRouter(prefix="/api/v1")


@router.get("/vdcs", response_model=list[VdcPublic], tags=["vdcs"], summary="List VDCs")
def list_vdcs_endpoint(session: SessionDep, principal: CurrentPrincipal):
    """All VDCs for global roles; the VDCs granted to your tenants otherwise, with quota use."""
    return vdc_service.to_public(session, principal, vdc_service.list_vdcs(session, principal))


@router.post("/vdcs", response_model=VdcPublic, status_code=201, tags=["vdcs"], summary="Create a VDC (infra-admin)")
def create_vdc_endpoint(data: VdcCreate, session: SessionDep, principal: CurrentPrincipal):
    """A named slice of the fleet (explicit nodes and selectors) granted to tenants with quotas."""
    return vdc_service.to_public(session, principal, [vdc_service.create_vdc(session, principal, data)])[0]


@router.get("/vdcs/{vdc_id}", response_model=VdcPublic, tags=["vdcs"], summary="Read a VDC")
def read_vdc_endpoint(vdc_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """One VDC; 404 when it is not granted to your tenants."""
    return vdc_service.to_public(session, principal, [vdc_service.get_vdc(session, principal, vdc_id)])[0]


@router.patch("/vdcs/{vdc_id}", response_model=VdcPublic, tags=["vdcs"], summary="Change a VDC (infra-admin)")
def update_vdc_endpoint(vdc_id: RowId, data: VdcUpdate, session: SessionDep, principal: CurrentPrincipal):
    """Change description, members, quotas or grants; given lists replace the current ones."""
    return vdc_service.to_public(session, principal, [vdc_service.update_vdc(session, principal, vdc_id, data)])[0]


@router.delete("/vdcs/{vdc_id}", status_code=204, tags=["vdcs"], summary="Delete a VDC (infra-admin)")
def delete_vdc_endpoint(vdc_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> Response:
    """Delete a VDC with no leases in force."""
    vdc_service.delete_vdc(session, principal, vdc_id)
    return Response(status_code=204)


@router.get("/leases", response_model=list[LeasePublic], tags=["leases"], summary="List leases")
def list_leases_endpoint(
    session: SessionDep,
    principal: CurrentPrincipal,
    node: str | None = None,
    tenant: str | None = None,
    active: bool = False,
):
    """Your tenants' leases (all for global roles), newest first; `active=true` for those in force now."""
    filters = _filters(session, node, tenant)
    if filters is None:
        return []
    return lease_service.to_public(session, lease_service.list_leases(session, principal, **filters, active=active))


def _filters(session: Session, node: str | None, tenant: str | None) -> dict[str, int | None] | None:
    """Node and tenant ids of the list filters; None when one names nothing (an empty list, not an error)."""
    node_id = session.exec(select(Node.id).where(Node.name == node)).first() if node else None
    tenant_id = session.exec(select(Tenant.id).where(Tenant.slug == tenant)).first() if tenant else None
    if (node and node_id is None) or (tenant and tenant_id is None):
        return None
    return {"node_id": node_id, "tenant_id": tenant_id}


@router.post("/leases", response_model=LeasePublic, status_code=201, tags=["leases"], summary="Lease a node to a tenant")
def create_lease_endpoint(data: LeaseCreate, session: SessionDep, principal: CurrentPrincipal):
    """Infra-admins lease any node; tenant admins lease nodes of their VDCs to their tenant. 409 on overlap or quota."""
    return lease_service.to_public(session, [lease_service.create_lease(session, principal, data)])[0]


@router.get("/leases/{lease_id}", response_model=LeasePublic, tags=["leases"], summary="Read a lease")
def read_lease_endpoint(lease_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """One lease; 404 when it is not your tenant's."""
    return lease_service.to_public(session, [lease_service.get_lease(session, principal, lease_id)])[0]


@router.patch("/leases/{lease_id}", response_model=LeasePublic, tags=["leases"], summary="End a lease")
def update_lease_endpoint(lease_id: RowId, data: LeaseUpdate, session: SessionDep, principal: CurrentPrincipal):
    """Set the lease's end. Leases are never deleted: billing needs their history."""
    return lease_service.to_public(session, [lease_service.update_lease(session, principal, lease_id, data)])[0]


@router.get("/gpu-instance-leases", response_model=list[GpuInstanceLeasePublic], tags=["leases"],
            summary="List GPU instance leases")
def list_instance_leases_endpoint(
    session: SessionDep,
    principal: CurrentPrincipal,
    node: str | None = None,
    tenant: str | None = None,
    active: bool = False,
):
    """Your tenants' MIG instance leases (all for global roles), newest first; `active=true` for those in force now."""
    filters = _filters(session, node, tenant)
    if filters is None:
        return []
    return instance_service.to_public(session, instance_service.list_instance_leases(session, principal, **filters, active=active))


@router.post("/gpu-instance-leases", response_model=GpuInstanceLeasePublic, status_code=201, tags=["leases"],
             summary="Lease a MIG instance of a node's GPU to a tenant")
def create_instance_lease_endpoint(data: GpuInstanceLeaseCreate, session: SessionDep, principal: CurrentPrincipal):
    """As for leases; 409 when the instance does not fit its GPU's compute slices, the node is leased whole, or on quota."""
    return instance_service.to_public(session, [instance_service.create_instance_lease(session, principal, data)])[0]


@router.get("/gpu-instance-leases/{lease_id}", response_model=GpuInstanceLeasePublic, tags=["leases"],
            summary="Read a GPU instance lease")
def read_instance_lease_endpoint(lease_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """One GPU instance lease; 404 when it is not your tenant's."""
    return instance_service.to_public(session, [instance_service.get_instance_lease(session, principal, lease_id)])[0]


@router.patch("/gpu-instance-leases/{lease_id}", response_model=GpuInstanceLeasePublic, tags=["leases"],
              summary="End a GPU instance lease")
def update_instance_lease_endpoint(lease_id: RowId, data: LeaseUpdate, session: SessionDep, principal: CurrentPrincipal):
    """Set the instance lease's end. Never deleted: billing needs their history."""
    return instance_service.to_public(session, [instance_service.update_instance_lease(session, principal, lease_id, data)])[0]
