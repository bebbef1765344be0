"""Console sessions as records: a user sees theirs (and their API tokens) and ends any of them.

A console sign-in writes a `console_session` row keyed by the session id its sealed cookie
carries; the console's gate accepts a cookie only while its row exists, has not ended and has
not expired, and notes when and from where it was last used (at most once a minute). Ending
a session — sign-out, the user on their account page, an infra admin for a user who leaves,
deactivating the user — sets `ended_at`, so a copied cookie stops working at once.
`end_everything` ends a user's console sessions and revokes their API tokens together.
Expired rows are deleted as new sessions start.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import delete, or_, update
from sqlmodel import Session, col, select

from kiln import audit
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.errors import NotFound
from kiln.models import ApiToken, ConsoleSessionRecord, User
from kiln.roles import Role

SEEN_RESOLUTION = timedelta(minutes=1)


class ConsoleSessionPublic(BaseModel):
    """A console session as its user (or an infra admin) sees it."""

    sid: str
    username: str
    kind: str
    created_at: datetime
    created_from: str
    expires_at: datetime
    last_seen_at: datetime
    last_seen_from: str
    user_agent: str
    ended_at: datetime | None
    ended_by: str | None


def start(session: Session, *, sid: str, kind: str, username: str, user_id: int | None, expires_at: datetime,
          address: str, user_agent: str) -> None:
    """Record a new console session (and forget long-expired ones)."""
    now = utcnow()
    session.execute(delete(ConsoleSessionRecord).where(col(ConsoleSessionRecord.expires_at) < now - timedelta(days=1)))
    session.add(ConsoleSessionRecord(sid=sid, kind=kind, username=username, user_id=user_id, expires_at=expires_at,
                                     created_at=now, created_from=address[:64], last_seen_at=now,
                                     last_seen_from=address[:64], user_agent=user_agent[:200]))


def check(session: Session, sid: str, address: str) -> str | None:
    """Why the session `sid` may not be used ("signedout" when its user ended it, "ended" when
    an infra admin did, "expired" when unknown or over), or None after noting its use."""
    row = session.get(ConsoleSessionRecord, sid)
    now = utcnow()
    if row is None or row.expires_at <= now:
        return "expired"
    if row.ended_at is not None:
        return "signedout" if row.ended_by == row.username else "ended"
    if now - row.last_seen_at >= SEEN_RESOLUTION or row.last_seen_from != address[:64]:
        row.last_seen_at, row.last_seen_from = now, address[:64]
        session.add(row)
    return None


def _owned(principal: Principal) -> object:
    """The rows of the caller's own sessions (local by user id, OIDC by username)."""
    if principal.user_id is not None:
        return ConsoleSessionRecord.user_id == principal.user_id
    return (ConsoleSessionRecord.username == principal.username) & col(ConsoleSessionRecord.user_id).is_(None)


def list_sessions(session: Session, principal: Principal, *, include_ended: bool = False) -> list[ConsoleSessionPublic]:
    """The caller's console sessions that have not expired, newest first."""
    statement = select(ConsoleSessionRecord).where(_owned(principal), col(ConsoleSessionRecord.expires_at) > utcnow())
    if not include_ended:
        statement = statement.where(col(ConsoleSessionRecord.ended_at).is_(None))
    rows = session.exec(statement.order_by(col(ConsoleSessionRecord.created_at).desc())).all()
    return [ConsoleSessionPublic(**row.model_dump(exclude={"user_id"})) for row in rows]


def end_session(session: Session, principal: Principal, sid: str) -> ConsoleSessionPublic:
    """End one of the caller's console sessions (infra admins: anyone's). Ending twice is harmless."""
    row = session.get(ConsoleSessionRecord, sid)
    own = row is not None and (row.user_id == principal.user_id if principal.user_id is not None
                               else row.user_id is None and row.username == principal.username)
    if row is None or not (own or principal.role == Role.INFRA_ADMIN):
        raise NotFound("console session not found (it may have expired)")
    if row.ended_at is None:
        row.ended_at, row.ended_by = utcnow(), principal.username[:64]
        session.add(row)
        audit.record(session, principal, "end", "console_session", sid[:8], detail={"username": row.username})
    return ConsoleSessionPublic(**row.model_dump(exclude={"user_id"}))


def end_everything(session: Session, principal: Principal, user: User) -> tuple[int, int]:
    """End all console sessions of `user` and revoke all their API tokens (e.g. when they
    leave, or are deactivated); (sessions ended, tokens revoked)."""
    now = utcnow()
    ended = session.execute(update(ConsoleSessionRecord).where(
        or_(ConsoleSessionRecord.user_id == user.id, ConsoleSessionRecord.username == user.username),
        col(ConsoleSessionRecord.ended_at).is_(None), col(ConsoleSessionRecord.expires_at) > now,
    ).values(ended_at=now, ended_by=principal.username[:64])).rowcount or 0
    revoked = session.execute(update(ApiToken).where(
        ApiToken.user_id == user.id, col(ApiToken.revoked_at).is_(None), col(ApiToken.expires_at) > now,
    ).values(revoked_at=now)).rowcount or 0
    audit.record(session, principal, "end-sessions", "user", user.id,
                 detail={"username": user.username, "console_sessions": ended, "api_tokens": revoked})
    return ended, revoked
