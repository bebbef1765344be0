"""Every HTTP request gets an id, a log context and (tracing on) a server span.

The id is the caller's `X-Request-ID` when it is a plausible one (a proxy's or load
balancer's, so one id follows the request through), otherwise a new one; the response
carries it back as `X-Request-ID`. Log lines written while the request is handled carry it
(kiln.logs), and the user and tenant once the caller is authenticated (kiln.api.deps).
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.logs import log_context
from kiln.telemetry import mark_failed, span

REQUEST_ID_HEADER = "x-request-id"
PLAUSIBLE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id_from(headers: dict[str, str]) -> str:
    """The caller's request id when it is plausible (no spaces, at most 128 characters), else a new one."""
    given = headers.get(REQUEST_ID_HEADER, "")
    return given if PLAUSIBLE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class RequestContextMiddleware:
    """ASGI middleware (outermost): request id in, log context and span around, `X-Request-ID` out."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        request_id = request_id_from(headers)
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"], "kiln.request_id": request_id,
                      "user_agent.original": headers.get("user-agent")}
        with log_context(request_id=request_id), \
                span(f"{method}", attributes, kind="server", parent_headers=headers) as current:

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]
                    current.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        mark_failed(current, f"HTTP {message['status']}")
                await send(message)

            try:
                await self.app(scope, receive, send_with_id)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    current.update_name(f"{method} {route}")
                    current.set_attribute("http.route", route)
