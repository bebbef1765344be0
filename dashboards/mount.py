"""Mount the console at `/` of the Kiln API app without shadowing the API.

The console answers every path except the API's own (`/api/...`, `/metrics`, `/healthz`,
`/readyz`), so unknown API paths still get problem-details 404/405 from FastAPI. The Dash
app is built on the first console request: API-only processes and tests never pay for it.
Dash runs on Flask (WSGI) inside the same ASGI server through a2wsgi's thread pool.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

API_PREFIXES = ("/api/",)
API_PATHS = frozenset({"/api", "/metrics", "/healthz", "/readyz"})


class ConsoleMount(Mount):
    """A Mount at `/` that leaves the API's paths to the API's router."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """No match for the API's paths (FastAPI answers them, 404/405 included); the console's otherwise."""
        path = scope.get("path", "")
        if scope["type"] == "http" and (path in API_PATHS or path.startswith(API_PREFIXES)):
            return Match.NONE, {}
        return super().matches(scope)


class LazyConsole:
    """ASGI app that builds the console for `state` on its first request."""

    def __init__(self, state: Any):
        self._state = state
        self._app: ASGIApp | None = None
        self._lock = threading.Lock()

    def _build(self) -> ASGIApp:
        with self._lock:
            if self._app is None:
                from a2wsgi import WSGIMiddleware

                from dashboards.console import create_console

                self._app = WSGIMiddleware(create_console(self._state), workers=16)
                if getattr(self._state, "freeze_long_lived", False):  # `kiln serve`: see kiln.long_lived
                    from kiln.long_lived import freeze_long_lived

                    freeze_long_lived()
            return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app or await anyio.to_thread.run_sync(self._build)
        await app(scope, receive, send)


def mount_console(app: Any) -> None:
    """Serve the console at `/` of a Kiln FastAPI app (after its API routes)."""
    app.router.routes.append(ConsoleMount("", app=LazyConsole(app.state), name="console"))
