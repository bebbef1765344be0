"""`/api/v1/users`: local users, their roles and tenants."""

from fastapi import APIRouter, Response
from pydantic import BaseModel

from kiln.api.deps import CurrentPrincipal, RowId, SessionDep
from kiln.errors import NotFound
from kiln.roles import Role
from kiln.sessions import end_everything
from kiln.users import (
    UserCreate,
    UserPublic,
    UserUpdate,
    create_user,
    delete_user,
    get_user,
    list_users,
    to_public,
    update_user,
)

router = APIRouter(prefix="/api/v1/users", tags=["users"])


@router.get("", response_model=list[UserPublic], summary="List the users you may see")
def list_endpoint(session: SessionDep, principal: CurrentPrincipal):
    """All users for infra-admins; the users of your tenants for tenant roles."""
    return to_public(session, principal, list_users(session, principal))


@router.get("/me", response_model=UserPublic, summary="The user you are signed in as")
def me_endpoint(session: SessionDep, principal: CurrentPrincipal):
    """Your own user (404 for OIDC callers, who have no local user)."""
    if principal.user_id is None:
        raise NotFound(f"{principal.username} signs in through OIDC and has no local user")
    return to_public(session, principal, [get_user(session, principal, principal.user_id)])[0]


@router.post("", response_model=UserPublic, status_code=201, summary="Create a user")
def create_endpoint(data: UserCreate, session: SessionDep, principal: CurrentPrincipal):
    """Infra-admins create any user; tenant-admins create users of their own tenants."""
    return to_public(session, principal, [create_user(session, principal, data)])[0]


@router.get("/{user_id}", response_model=UserPublic, summary="Read a user")
def read_endpoint(user_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """One user; 404 when it does not exist or is outside your tenants."""
    return to_public(session, principal, [get_user(session, principal, user_id)])[0]


@router.patch("/{user_id}", response_model=UserPublic, summary="Change a user")
def update_endpoint(user_id: RowId, data: UserUpdate, session: SessionDep, principal: CurrentPrincipal):
    """Change role, tenants, password, name, e-mail or active flag."""
    return to_public(session, principal, [update_user(session, principal, user_id, data)])[0]


@router.delete("/{user_id}", status_code=204, summary="Delete a user")
def delete_endpoint(user_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> Response:
    """Delete a user with their tokens; 409 for the last infra-admin."""
    delete_user(session, principal, user_id)
    return Response(status_code=204)


class SessionsEnded(BaseModel):
    """How many console sessions were ended and API tokens revoked."""

    console_sessions: int
    api_tokens: int


@router.post("/{user_id}/end-sessions", response_model=SessionsEnded, summary="End all sessions of a user")
def end_sessions_endpoint(user_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """Infra-admins: end every console session of the user and revoke every API token (e.g. when
    they leave); their next request is refused at once."""
    principal.require_role(Role.INFRA_ADMIN, action="end other users' sessions")
    ended, revoked = end_everything(session, principal, get_user(session, principal, user_id))
    return SessionsEnded(console_sessions=ended, api_tokens=revoked)
