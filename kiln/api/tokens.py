"""`/api/v1/tokens` (personal API tokens) and `/api/v1/auth/token` (password sign-in)."""

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from kiln.api.deps import CurrentPrincipal, RowId, SessionDep
from kiln.auth import Principal
from kiln.errors import BadRequest, Unauthorized
from kiln.models import User
from kiln.roles import Role
from kiln.tokens import TokenCreate, TokenCreated, TokenPublic, issue_token, list_tokens, revoke_token
from kiln.throttle import sign_in

router = APIRouter(prefix="/api/v1", tags=["tokens"])


class PasswordLogin(BaseModel):
    """Username and password, exchanged for a token."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(max_length=64)
    password: SecretStr = Field(max_length=1024)
    expires_in_days: int = Field(default=1, ge=1, le=30)


@router.post("/auth/token", response_model=TokenCreated, status_code=201, summary="Sign in with a password")
def login_endpoint(data: PasswordLogin, request: Request, session: SessionDep):
    """Exchange a local user's password for an API token (default lifetime one day). Repeated
    failures for a username or from an address are answered 429 with `Retry-After`."""
    source = request.client.host if request.client else ""
    user = sign_in(session, request.app.state.settings, data.username, data.password.get_secret_value(), source)
    if user is None:
        raise Unauthorized("wrong username or password, or the user is disabled")
    actor = Principal(username=user.username, role=Role(user.role), user_id=user.id, source=source)
    return issue_token(session, actor, user, name="password sign-in", days=data.expires_in_days)


@router.get("/tokens", response_model=list[TokenPublic], summary="List API tokens")
def list_endpoint(session: SessionDep, principal: CurrentPrincipal, username: str | None = None):
    """Your tokens; infra-admins see everyone's and may filter by `username`."""
    return list_tokens(session, principal, username)


@router.post("/tokens", response_model=TokenCreated, status_code=201, summary="Create an API token for yourself")
def create_endpoint(data: TokenCreate, request: Request, session: SessionDep, principal: CurrentPrincipal):
    """The token is in the response once; only its digest is stored. `scope: read` makes a
    token for GET requests only; `tenant` limits it to one of your tenants."""
    if principal.user_id is None:
        raise BadRequest("OIDC callers use their identity provider's tokens and cannot create Kiln tokens")
    user = session.get(User, principal.user_id)
    days = data.expires_in_days or request.app.state.settings.token_default_days
    return issue_token(session, principal, user, name=data.name, days=days, scope=data.scope, tenant=data.tenant)


@router.delete("/tokens/{token_id}", response_model=TokenPublic, summary="Revoke an API token")
def revoke_endpoint(token_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """Revoke one of your tokens (infra-admins: anyone's)."""
    return revoke_token(session, principal, token_id)
