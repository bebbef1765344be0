"""`/api/v1/tenants`: create, list, read, change and delete tenants."""

from fastapi import APIRouter, Response

from kiln.api.deps import CurrentPrincipal, RowId, SessionDep
from kiln.tenants import (
    TenantCreate,
    TenantPublic,
    TenantUpdate,
    create_tenant,
    delete_tenant,
    get_tenant,
    list_tenants,
    update_tenant,
)

router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"])


@router.get("", response_model=list[TenantPublic], summary="List the tenants you may see")
def list_endpoint(session: SessionDep, principal: CurrentPrincipal):
    """Every tenant for global roles; your own tenants otherwise."""
    return list_tenants(session, principal)


@router.post("", response_model=TenantPublic, status_code=201, summary="Create a tenant (infra-admin)")
def create_endpoint(data: TenantCreate, session: SessionDep, principal: CurrentPrincipal):
    """Create a tenant; 409 when the slug is taken."""
    return create_tenant(session, principal, data)


@router.get("/{tenant_id}", response_model=TenantPublic, summary="Read a tenant")
def read_endpoint(tenant_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """One tenant; 404 when it does not exist or is not yours."""
    return get_tenant(session, principal, tenant_id)


@router.patch("/{tenant_id}", response_model=TenantPublic, summary="Change a tenant (infra-admin)")
def update_endpoint(tenant_id: RowId, data: TenantUpdate, session: SessionDep, principal: CurrentPrincipal):
    """Change name, cost centre or description."""
    return update_tenant(session, principal, tenant_id, data)


@router.delete("/{tenant_id}", status_code=204, summary="Delete a tenant without members (infra-admin)")
def delete_endpoint(tenant_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> Response:
    """Delete a tenant; 409 while it still has members."""
    delete_tenant(session, principal, tenant_id)
    return Response(status_code=204)
