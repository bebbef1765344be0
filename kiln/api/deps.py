"""FastAPI dependencies: the request's database session and the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import annotated_types
from fastapi import Depends, Request
from sqlmodel import Session

from kiln.auth import Principal
from kiln.db import MAX_INTEGER
from kiln.errors import Unauthorized
from kiln.logs import bind_caller
from kiln.oidc import OIDCVerifier, principal_from_claims
from kiln.security import TOKEN_PREFIX
from kiln.tokens import principal_for_token


RowId = Annotated[int, annotated_types.Ge(1), annotated_types.Le(MAX_INTEGER)]
"""A row id in a path or query (`/nodes/{node_id}`, `?node_id=`): out of range is a 422 naming the parameter."""


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, committed when the endpoint returns.

    An exception anywhere in the endpoint rolls everything back, so a failed request writes
    nothing. The commit runs before the response is sent (`scope="function"` below), so a
    failed commit is reported to the caller instead of being lost.
    """
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session
        session.commit()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def _principal_from_oidc(session: Session, request: Request, token: str) -> Principal:
    verifier: OIDCVerifier | None = request.app.state.oidc
    if verifier is None:
        raise Unauthorized("bearer token is not a Kiln API token, and OIDC sign-in is not configured")
    claims = verifier.verify(token)
    return principal_from_claims(session, claims, request.app.state.settings, source=_client_address(request))


def _client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def get_principal(request: Request, session: SessionDep) -> Principal:
    """Authenticate the caller from `Authorization: Bearer TOKEN`."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "authentication required: send `Authorization: Bearer TOKEN` (create a token with `kiln tokens create USER`)"
        )
    token = token.strip()
    if token.startswith(TOKEN_PREFIX):  # a read token asking to change something: 403 here, for every route
        principal = principal_for_token(session, token, request.method, source=_client_address(request))
    else:
        principal = _principal_from_oidc(session, request, token)
    bind_caller(principal.username, principal.tenant_ids)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
