"""`/api/v1/sessions`: your console sign-ins (created, last used, from where), and ending one."""

from typing import Annotated

from fastapi import APIRouter, Path

from kiln.api.deps import CurrentPrincipal, SessionDep
from kiln.sessions import ConsoleSessionPublic, end_session, list_sessions

router = APIRouter(prefix="/api/v1/sessions", tags=["sessions"])
SessionId = Annotated[str, Path(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@router.get("", response_model=list[ConsoleSessionPublic], summary="List your console sessions")
def list_endpoint(session: SessionDep, principal: CurrentPrincipal):
    """Your console sessions that have not ended or expired, newest first (API tokens: /api/v1/tokens)."""
    return list_sessions(session, principal)


@router.delete("/{sid}", response_model=ConsoleSessionPublic, summary="End a console session")
def end_endpoint(sid: SessionId, session: SessionDep, principal: CurrentPrincipal):
    """End one of your console sessions (infra-admins: anyone's); its cookie is refused from now on."""
    return end_session(session, principal, sid)
