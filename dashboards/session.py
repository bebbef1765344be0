"""The console's session cookie and CSRF tokens.

The session is a cookie: a small JSON document encrypted and authenticated with Fernet under
a key derived (HKDF) from `KILN_SECRET_KEY`, so it can be neither read nor forged without the
key. It expires `KILN_CONSOLE_SESSION_HOURS` after sign-in (absolute, not sliding). Local
users are looked up again on every request, so a deactivated or deleted user, or a changed
role, takes effect at once; OIDC sessions carry the role and tenant slugs the identity
provider granted at sign-in, and its ID token (for RP-initiated logout). Each session also
has a record (`kiln.sessions`: created, last used, from where) that its user sees and can
end; the gate refuses a cookie whose record has ended (signed out, ended from the account
page or by an infra admin) or does not exist.

CSRF: every state-changing request must carry a token bound to the session,
HMAC(key, session id). Forms send it in a `csrf_token` field; the console's script sends it
as the `X-Kiln-CSRF` header on Dash's callback POSTs, reading it from the `kiln_csrf`
cookie (readable by scripts of this origin only). The sign-in form, which has no session
yet, is bound the same way to a random nonce in its own short-lived cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass, field

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SESSION_COOKIE = "kiln_session"
CSRF_COOKIE = "kiln_csrf"
SIGNIN_COOKIE = "kiln_signin"
CSRF_HEADER = "X-Kiln-CSRF"
CSRF_FIELD = "csrf_token"
SIGNIN_NONCE_SECONDS = 3600


def _derive(secret_key: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret_key.encode())


@dataclass(frozen=True)
class ConsoleSession:
    """Who signed in, how, and until when (seconds since the epoch)."""

    kind: str  # "local" or "oidc"
    username: str
    expires_at: float
    user_id: int | None = None
    role: str | None = None  # OIDC only: the role granted at sign-in
    tenants: tuple[str, ...] = field(default_factory=tuple)  # OIDC only: tenant slugs granted
    id_token: str | None = None  # OIDC only: the ID token, sent back as `id_token_hint` at sign-out
    sid: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    issued_at: float = field(default_factory=time.time)

    @property
    def expired(self) -> bool:
        """Whether the session's lifetime is over."""
        return time.time() >= self.expires_at


class SessionCodec:
    """Seals sessions into cookie values and checks CSRF tokens, with keys from the secret key."""

    def __init__(self, secret_key: str, lifetime_seconds: float):
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret_key, b"kiln console session v1")))
        self._csrf_key = _derive(secret_key, b"kiln console csrf v1")
        self.lifetime = lifetime_seconds

    def new_session(self, kind: str, username: str, **fields: object) -> ConsoleSession:
        """A session starting now and ending after the configured lifetime."""
        return ConsoleSession(kind=kind, username=username, expires_at=time.time() + self.lifetime, **fields)

    def seal(self, session: ConsoleSession) -> str:
        """The cookie value for a session (encrypted and authenticated)."""
        return self.seal_data({**asdict(session), "tenants": list(session.tenants)})

    def open(self, value: str | None) -> ConsoleSession | None:
        """The session in a cookie value, or None when it is missing, altered or made with another key.

        An expired session is returned (check `.expired`) so the caller can say it expired."""
        if not value:
            return None
        try:
            payload = json.loads(self._fernet.decrypt(value.encode()))
            payload["tenants"] = tuple(payload.get("tenants") or ())
            return ConsoleSession(**payload)
        except (InvalidToken, ValueError, TypeError):
            return None

    def seal_data(self, data: dict) -> str:
        """Encrypt and authenticate a small JSON document (e.g. an OIDC sign-on's state) for a cookie."""
        return self._fernet.encrypt(json.dumps(data, separators=(",", ":")).encode()).decode()

    def open_data(self, value: str | None) -> dict | None:
        """The document `seal_data` sealed, or None when missing, altered or made with another key."""
        try:
            return json.loads(self._fernet.decrypt(value.encode())) if value else None
        except (InvalidToken, ValueError):
            return None

    def csrf_token(self, session: ConsoleSession) -> str:
        """The CSRF token of a session: forms and callback requests must present it."""
        return self._mac("session:" + session.sid)

    def signin_token(self, nonce: str) -> str:
        """The CSRF token of a sign-in form whose nonce cookie holds `nonce`."""
        return self._mac("signin:" + nonce)

    def valid_csrf(self, expected: str, presented: str | None) -> bool:
        """Constant-time comparison of a presented token with the expected one."""
        return bool(presented) and hmac.compare_digest(expected.encode(), presented.encode())

    def _mac(self, message: str) -> str:
        return hmac.new(self._csrf_key, message.encode(), hashlib.sha256).hexdigest()


def cookie_secure(dev: bool, scheme: str) -> bool:
    """Whether cookies get the Secure flag: always, except in dev mode over plain http."""
    return not (dev and scheme == "http")
