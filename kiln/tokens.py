"""Personal API tokens: shown once, stored as a SHA-256 digest, expiring, revocable, scoped.

A token's `scope` is `write` (everything its user may do; the default, as before scopes
existed) or `read` (GET, HEAD and OPTIONS only: the caller is `read_only`, and
`kiln.api.deps.get_principal` answers 403 to anything else). A token of a user who belongs to
several tenants can be limited to one of them (`tenant`): it sees that tenant only.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from kiln import audit
from kiln.auth import Principal, principal_for_user
from kiln.db import utcnow
from kiln.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from kiln.models import ApiToken, Membership, Tenant, User
from kiln.roles import TENANT_ROLES, Role
from kiln.tenants import Slug
from kiln.security import new_api_token, token_digest, token_display_prefix

LAST_USED_RESOLUTION = timedelta(minutes=5)
Scope = Literal["read", "write"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TokenCreate(BaseModel):
    """Fields to create a token for yourself."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=100, description="What the token is for.")
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="Default: KILN_TOKEN_DEFAULT_DAYS.")
    scope: Scope = Field(default="write", description="`read`: GET requests only; `write`: all your rights.")
    tenant: Slug | None = Field(default=None, description="Limit the token to this one of your tenants.")


class TokenPublic(BaseModel):
    """A token's metadata (never the token)."""

    id: int
    username: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    last_used_from: str | None
    scope: Scope
    tenant: str | None


class TokenCreated(TokenPublic):
    """A new token: `token` is shown this once and cannot be retrieved again."""

    token: str


def issue_token(session: Session, principal: Principal, user: User, *, name: str = "", days: int,
                scope: Scope = "write", tenant: str | None = None) -> TokenCreated:
    """Create a token for `user` valid for `days` (with `scope`, limited to `tenant`, one of the
    user's tenants); returns it with the plaintext token."""
    if scope not in ("read", "write"):
        raise ValidationFailed("scope", f"'{scope}' is not a scope: use read or write")
    tenant_id = _token_tenant(session, user, tenant) if tenant else None
    token = new_api_token()
    row = ApiToken(
        user_id=user.id,
        name=name,
        prefix=token_display_prefix(token),
        token_hash=token_digest(token),
        expires_at=utcnow() + timedelta(days=days),
        scope=scope,
        tenant_id=tenant_id,
    )
    session.add(row)
    session.flush()
    audit.record(session, principal, "create", "api_token", row.id,
                 detail={"username": user.username, "name": name, "scope": scope, "tenant": tenant})
    return TokenCreated(**_public(row, user.username, tenant).model_dump(), token=token)


def _token_tenant(session: Session, user: User, slug: str) -> int:
    if Role(user.role) not in TENANT_ROLES:
        raise ValidationFailed("tenant", f"{user.username} has the global role {user.role}: its tokens cannot be "
                                         "limited to one tenant")
    tenant_id = session.exec(select(Tenant.id).join(Membership, Membership.tenant_id == Tenant.id).where(
        Membership.user_id == user.id, Tenant.slug == slug)).first()
    if tenant_id is None:
        raise ValidationFailed("tenant", f"{user.username} is not a member of a tenant '{slug}'")
    return tenant_id


def _public(row: ApiToken, username: str, tenant: str | None) -> TokenPublic:
    return TokenPublic(**row.model_dump(exclude={"user_id", "token_hash", "tenant_id"}), username=username,
                       tenant=tenant)


def principal_for_token(session: Session, token: str, method: str, source: str = "") -> Principal:
    """The caller a token stands for, within the token's scope and tenant; Unauthorized saying
    why when it cannot be used, Forbidden when a read token is used to change something."""
    row, user = _usable(session, token)
    principal = principal_for_user(session, user, source=source)
    if row.tenant_id is not None:
        if row.tenant_id not in principal.tenant_ids:
            raise Unauthorized(f"API token {row.prefix}… is limited to a tenant its user no longer belongs to")
        principal = replace(principal, tenant_ids=frozenset({row.tenant_id}))
    if row.scope != "write":
        principal = replace(principal, read_only=True)
        if method.upper() not in SAFE_METHODS:
            raise Forbidden(f"API token {row.prefix}… is read-only (scope read): it may not {method.upper()}; "
                            "create a token with scope write for changes")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION or row.last_used_from != source:
        row.last_used_at, row.last_used_from = now, source[:64] or None
        session.add(row)
    return principal


def _usable(session: Session, token: str) -> tuple[ApiToken, User]:
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == token_digest(token))).first()
    if row is None:
        raise Unauthorized("API token is not valid: check it was copied whole, or create a new one")
    now = utcnow()
    if row.revoked_at is not None:
        raise Unauthorized(f"API token {row.prefix}… was revoked on {row.revoked_at:%Y-%m-%d}")
    if row.expires_at <= now:
        raise Unauthorized(f"API token {row.prefix}… expired on {row.expires_at:%Y-%m-%d}: create a new one")
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise Unauthorized("the user of this API token is disabled")
    return row, user


def list_tokens(session: Session, principal: Principal, username: str | None = None) -> list[TokenPublic]:
    """The caller's tokens; infra-admins may list anyone's (or all, with no username)."""
    statement = (select(ApiToken, User.username, Tenant.slug).join(User, User.id == ApiToken.user_id)
                 .join(Tenant, Tenant.id == ApiToken.tenant_id, isouter=True).order_by(col(ApiToken.id)))
    if principal.role != Role.INFRA_ADMIN:
        statement = statement.where(ApiToken.user_id == principal.user_id)
    if username:
        statement = statement.where(User.username == username)
    return [_public(row, name, slug) for row, name, slug in session.exec(statement).all()]


def revoke_token(session: Session, principal: Principal, token_id: int) -> TokenPublic:
    """Revoke a token (one's own; infra-admins any). Revoking twice is harmless."""
    row = session.get(ApiToken, token_id)
    if row is None or (principal.role != Role.INFRA_ADMIN and row.user_id != principal.user_id):
        raise NotFound(f"token {token_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        audit.record(session, principal, "revoke", "api_token", row.id)
    user = session.get(User, row.user_id)
    tenant = session.get(Tenant, row.tenant_id) if row.tenant_id else None
    return _public(row, user.username if user else "?", tenant.slug if tenant else None)


def find_token_id(session: Session, id_prefix_or_token: str) -> int:
    """A token id from its number, its display prefix (as `kiln tokens list` shows) or the whole
    token (what a user holds after a leak; it is matched by its digest, never stored)."""
    if id_prefix_or_token.isdigit():
        return int(id_prefix_or_token)
    whole = session.exec(select(ApiToken.id).where(ApiToken.token_hash == token_digest(id_prefix_or_token))).first()
    if whole is not None:
        return whole
    matches = session.exec(select(ApiToken.id).where(ApiToken.prefix == id_prefix_or_token.rstrip("…"))).all()
    if len(matches) != 1:
        shown = token_display_prefix(id_prefix_or_token) + "…" if len(id_prefix_or_token) > 16 else id_prefix_or_token
        raise NotFound(f"no single token with id, prefix or value '{shown}' (see `kiln tokens list`)")
    return matches[0]
