"""Personal API tokens: shown once, stored as a SHA-256 digest, expiring, revocable."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from kiln import audit
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.errors import NotFound, Unauthorized
from kiln.models import ApiToken, User
from kiln.roles import Role
from kiln.security import new_api_token, token_digest, token_display_prefix

LAST_USED_RESOLUTION = timedelta(minutes=5)


class TokenCreate(BaseModel):
    """Fields to create a token for yourself."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=100, description="What the token is for.")
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="Default: KILN_TOKEN_DEFAULT_DAYS.")


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


class TokenCreated(TokenPublic):
    """A new token: `token` is shown this once and cannot be retrieved again."""

    token: str


def issue_token(session: Session, principal: Principal, user: User, *, name: str = "", days: int) -> TokenCreated:
    """Create a token for `user` valid for `days`; returns it with the plaintext token."""
    token = new_api_token()
    row = ApiToken(
        user_id=user.id,
        name=name,
        prefix=token_display_prefix(token),
        token_hash=token_digest(token),
        expires_at=utcnow() + timedelta(days=days),
    )
    session.add(row)
    session.flush()
    audit.record(session, principal, "create", "api_token", row.id, detail={"username": user.username, "name": name})
    return TokenCreated(**_public(row, user.username).model_dump(), token=token)


def _public(row: ApiToken, username: str) -> TokenPublic:
    return TokenPublic(**row.model_dump(exclude={"user_id", "token_hash"}), username=username)


def resolve_token(session: Session, token: str) -> User:
    """The active user a token belongs to; Unauthorized saying why when it cannot be used."""
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
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.add(row)
    return user


def list_tokens(session: Session, principal: Principal, username: str | None = None) -> list[TokenPublic]:
    """The caller's tokens; infra-admins may list anyone's (or all, with no username)."""
    statement = select(ApiToken, User.username).join(User, User.id == ApiToken.user_id).order_by(col(ApiToken.id))
    if principal.role != Role.INFRA_ADMIN:
        statement = statement.where(ApiToken.user_id == principal.user_id)
    if username:
        statement = statement.where(User.username == username)
    return [_public(row, name) for row, name in session.exec(statement).all()]


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
    return _public(row, user.username if user else "?")


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
