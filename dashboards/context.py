"""What every console request needs: the app's settings and engine, and who is asking.

The gate (`dashboards.gate`) resolves the caller once per request into `flask.g`; page
layouts and callbacks read it from here and pass it to the same service functions the API
uses (`fleet.nodes.visible`, `Principal.scope`, ...), so the console can show nothing the
API would not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import flask
from sqlalchemy import Engine
from sqlmodel import Session

from dashboards.session import ConsoleSession, SessionCodec
from kiln.auth import Principal
from kiln.errors import Unauthorized
from kiln.settings import Settings


@dataclass
class ConsoleContext:
    """The console's share of one Kiln app: settings, engine, app state (fleet runtime), codec."""

    settings: Settings
    engine: Engine
    state: Any  # the FastAPI app's state: `fleet.runtime.runtime_of(state)` gives the runtime
    codec: SessionCodec
    oidc: Any = None  # dashboards.oidc_signin.OIDCSignIn when OIDC is configured
    admin_paths: tuple[str, ...] = ()  # pages only infra admins may open (others get HTTP 403)


def console_context() -> ConsoleContext:
    """The context of the console serving the current request."""
    return flask.current_app.config["KILN_CONSOLE"]


def current_principal() -> Principal:
    """The signed-in caller of the current request (the gate refused the request otherwise)."""
    principal = getattr(flask.g, "principal", None)
    if principal is None:
        raise Unauthorized("sign in to use the console")
    return principal


def current_session() -> ConsoleSession:
    """The console session of the current request."""
    return flask.g.console_session


def current_csrf_token() -> str:
    """The CSRF token forms of the current session must carry."""
    return console_context().codec.csrf_token(current_session())


@contextmanager
def db_session() -> Iterator[Session]:
    """A database session committed on success (callbacks that change things), rolled back on error."""
    with Session(console_context().engine, expire_on_commit=False) as session:
        yield session
        session.commit()
