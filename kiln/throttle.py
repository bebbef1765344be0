"""Password sign-in throttling, shared by every replica through the database.

Failed password sign-ins (the API's `POST /api/v1/auth/token` and the console's form alike)
are counted per username (as typed, lower-cased: unknown usernames are counted the same, so
the answers never tell whether a user exists) and per client address, in `signin_failure`:

- from the third failure on, the next try must wait 2**(failures-3) seconds (1, 2, 4 … up to
  60 s): a guessing run slows down at once, a typo costs nothing;
- at `KILN_SIGNIN_MAX_FAILURES` failures the username is locked for `KILN_SIGNIN_LOCK_MINUTES`;
  an address is locked one failure earlier, so a guesser on one address is stopped before the
  user is, and can never keep the real user out (the user's count restarts once a whole lock
  period has passed without failures, which an address lock guarantees);
- a lock writes an audit event (`lock`, `signin`), `kiln users unlock USER` lifts a user's;
- a success clears the username's count (never the address's: signing in to one's own account
  must not reset a guessing run against another).

A throttled try is refused before the password is checked: `SigninThrottled` (HTTP 429 with
`Retry-After`), without saying which counter tripped. Failures are committed in a transaction
of their own, so the request that failed (and rolls back) cannot lose them.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import Engine, case, delete
from sqlmodel import Session, select

from kiln import audit
from kiln.auth import Principal
from kiln.db import upsert, utcnow
from kiln.errors import KilnError
from kiln.models import SigninFailure, User
from kiln.roles import Role
from kiln.settings import Settings
from kiln.users import authenticate

FREE_FAILURES = 2  # failures before any delay
MAX_DELAY_SECONDS = 60
KEY_LENGTH = 64


class SigninThrottled(KilnError):
    """Too many failed sign-ins for this username or from this address: try again later."""

    status, title = 429, "Too many requests"

    def __init__(self, retry_after: int):
        wait = f"{retry_after} seconds" if retry_after < 120 else f"{math.ceil(retry_after / 60)} minutes"
        super().__init__(f"too many failed sign-ins: try again in {wait}", retry_after=retry_after)
        self.retry_after = retry_after


def delay_after(failures: int) -> timedelta:
    """How long to wait after the `failures`-th failure before the next try."""
    if failures <= FREE_FAILURES:
        return timedelta(0)
    return timedelta(seconds=min(2 ** (failures - FREE_FAILURES - 1), MAX_DELAY_SECONDS))


def _keys(username: str, address: str) -> list[tuple[str, str]]:
    return [("user", username.strip().lower()[:KEY_LENGTH]), ("address", (address or "unknown")[:KEY_LENGTH])]


def _limits(settings: Settings) -> dict[str, int]:
    return {"user": settings.signin_max_failures, "address": settings.signin_max_failures - 1}


def check(session: Session, username: str, address: str, now: datetime | None = None) -> None:
    """SigninThrottled when the username or the address must wait (delay or lock)."""
    now = now or utcnow()
    waits = []
    for kind, key in _keys(username, address):
        row = session.exec(select(SigninFailure).where(SigninFailure.kind == kind, SigninFailure.key == key)).first()
        if row is None:
            continue
        until = max(row.locked_until or now, row.last_failed_at + delay_after(row.failures))
        if until > now:
            waits.append(until - now)
    if waits:
        raise SigninThrottled(math.ceil(max(waits).total_seconds()))


def record_failure(engine: Engine, settings: Settings, username: str, address: str, now: datetime | None = None) -> None:
    """Count a failed sign-in for the username and the address (committed at once) and lock
    what reached its limit; a count whose last failure is older than a lock period restarts."""
    now = now or utcnow()
    window = timedelta(minutes=settings.signin_lock_minutes)
    limits = _limits(settings)
    with Session(engine) as session, session.begin():
        for kind, key in _keys(username, address):
            upsert(session, SigninFailure, [{"kind": kind, "key": key, "failures": 1, "last_failed_at": now}],
                   ("kind", "key"), lambda current, new: _count(current, new, now - window))
            row = session.exec(select(SigninFailure).where(SigninFailure.kind == kind, SigninFailure.key == key)
                               .with_for_update()).one()
            if row.failures >= limits[kind] and (row.locked_until is None or row.locked_until <= now):
                row.locked_until = now + window
                session.add(row)
                actor = Principal(username="kiln:signin-throttle", role=Role.TENANT_MEMBER, source=address)
                audit.record(session, actor, "lock", "signin", key, detail={
                    "kind": kind, "failures": row.failures, "minutes": settings.signin_lock_minutes})


def _count(current, new, stale_before: datetime) -> dict:
    stale = current.last_failed_at < stale_before
    return {"failures": case((stale, 1), else_=current.failures + 1),
            "locked_until": case((stale, None), else_=current.locked_until),
            "last_failed_at": new.last_failed_at}


def clear_user(session: Session, username: str) -> int:
    """Forget a username's failures and lift its lock; how many rows were removed."""
    result = session.execute(delete(SigninFailure).where(SigninFailure.kind == "user",
                                                         SigninFailure.key == username.strip().lower()[:KEY_LENGTH]))
    return result.rowcount or 0


def sign_in(session: Session, settings: Settings, username: str, password: str, address: str) -> User | None:
    """The user these credentials sign in, or None (counted as a failure); SigninThrottled
    first when the username or the address must wait."""
    check(session, username, address)
    user = authenticate(session, username, password)
    if user is None:
        record_failure(session.get_bind(), settings, username, address)
        return None
    clear_user(session, username)
    return user
