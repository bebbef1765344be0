"""Every error an endpoint can raise, as an RFC 9457 `application/problem+json` response."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kiln.errors import KilnError
from kiln.validation import clean_message

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(
    request: Request | None, status: int, title: str, detail: str, headers: dict[str, str] | None = None, **ext: Any
) -> JSONResponse:
    """An `application/problem+json` response (RFC 9457)."""
    body = {
        "type": f"urn:kiln:problem:{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
    body.update(ext)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "body")


async def _kiln_error(request: Request, exc: KilnError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if "retry_after" in exc.extensions:  # 429 and 503: when to try again, in seconds
        headers["Retry-After"] = str(exc.extensions["retry_after"])
    return problem_response(request, exc.status, exc.title, exc.detail, headers or None, **exc.extensions)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        ctx = errors[0].get("ctx", {})
        return problem_response(request, 400, "Malformed JSON", f"request body is not valid JSON: {ctx.get('error', '')}")
    items = []
    for error in errors:
        message = clean_message(error["msg"])
        if error.get("type") == "extra_forbidden":
            message = "unknown field; remove it"
        items.append({"field": _field_name(tuple(error["loc"])), "message": message})
    detail = "; ".join(f"{item['field']}: {item['message']}" for item in items)
    return problem_response(request, 422, "Validation failed", detail, errors=items)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    titles = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized", 403: "Forbidden"}
    title = titles.get(exc.status_code, "HTTP error")
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}"
    return problem_response(request, exc.status_code, title, detail, dict(exc.headers or {}))


async def _integrity_error(request: Request, exc: IntegrityError) -> JSONResponse:
    log.info("integrity error on %s %s: %s", request.method, request.url.path, exc.orig)
    return problem_response(request, 409, "Conflict", "the change conflicts with existing data (a duplicate or a reference in use)")


async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
    log.error("database error on %s %s: %s", request.method, request.url.path, exc.orig)
    return problem_response(request, 503, "Service unavailable", "the database is unreachable or busy; retry shortly")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(request, 500, "Internal error", "an unexpected error occurred; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error an endpoint can raise to a problem-details response."""
    app.add_exception_handler(KilnError, _kiln_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(Exception, _unexpected)
