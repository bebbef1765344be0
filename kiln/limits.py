"""Request limits enforced before any endpoint sees the request: body size, and no NUL characters.

NUL (U+0000) is refused everywhere, on every database: PostgreSQL cannot store it in text, and
SQLite would store what a PostgreSQL restore of the same data then rejects.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.api.problems import problem_response


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app a body already read, then carries on with the real one."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodySizeLimitMiddleware:
    """Answer 413 problem details for bodies over `max_bytes` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): buffer up to the limit, then replay to the app.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        await self.app(scope, replaying(body, receive), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            None, 413, "Payload too large", f"request body exceeds {self.max_bytes} bytes (KILN_MAX_BODY_BYTES)"
        )
        await response(scope, receive, send)


# `\u0000` in JSON text, unless its backslash is itself escaped (`\\u0000` is the six characters `\u0000`).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_TEXT_TYPES = (b"application/json", b"application/problem+json", b"text/", b"application/x-www-form-urlencoded")


class NulCharacterMiddleware:
    """Answer 422 problem details for a NUL character in the path, the query or a text body."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"] or b"\x00" in scope["query_string"]:
            await self._reject(scope, receive, send, "the URL")
            return
        content_type = dict(scope["headers"]).get(b"content-type", b"").lower()
        if not content_type.startswith(_TEXT_TYPES):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if b"\x00" in body or b"%00" in body and b"urlencoded" in content_type or _JSON_NUL.search(body):
            await self._reject(scope, receive, send, "the request body")
            return
        await self.app(scope, replaying(body, receive), send)

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, where: str) -> None:
        response = problem_response(None, 422, "Validation failed",
                                    f"{where} contains a NUL character (U+0000), which Kiln never stores: remove it")
        await response(scope, receive, send)
