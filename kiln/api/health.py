"""`/healthz` (the process answers), `/readyz` (database reachable, schema current), `/metrics`."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from kiln.errors import ServiceUnavailable
from kiln.schema import schema_status

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness")
def readyz(request: Request) -> dict[str, str]:
    """Ready when the database answers and its schema is this Kiln's; 503 problem details otherwise."""
    engine = request.app.state.engine
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        status = schema_status(engine)
    except SQLAlchemyError as exc:
        raise ServiceUnavailable(f"database unreachable: {type(exc).__name__}") from None
    problem = status.problem()
    if problem:
        raise ServiceUnavailable(problem)
    return {"status": "ready", "schema": status.current or ""}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus exposition format."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
