"""A fixture HTTP server that answers like OpenCost's allocation API (OpenCost cannot run here).

It serves `GET /allocation/compute` with files from `tests/data/opencost/`, written in
OpenCost's documented response shape: `{"code": 200, "data": [{"<namespace>": {allocation},
...}, ...]}`, one map per step, each allocation with the fields OpenCost's
`core/pkg/opencost/allocation_json.go` (`AllocationJSON`) writes — `name`, `properties`,
`window` {start, end}, `start`, `end`, `minutes`, `cpuCoreHours`, `gpuHours`, `ramByteHours`,
the `*Cost` fields, `totalCost`, `totalEfficiency` (null when not computable) and more — as
described at https://opencost.io/docs/integrations/api and
https://opencost.io/docs/integrations/api-examples (checked for this fixture). Error bodies
follow OpenCost's envelope `{"code": 500, "status": "error", "message": "..."}`, or plain text
with an HTTP error status as its `http.Error` handlers send.

A real HTTP server on loopback (http.server in a thread), so the collector's HTTP client,
timeouts and error handling are exercised for real. It records every request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

DATA_DIR = Path(__file__).parent / "data" / "opencost"


@dataclass
class Reply:
    """What the server answers next: status, body and content type, after `delay` seconds."""

    status: int = 200
    body: bytes = b'{"code": 200, "data": []}'
    content_type: str = "application/json"
    delay: float = 0.0


class OpenCostFixture:
    """A running fixture server: its `url`, what it will answer, and the requests it got."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.reply = Reply()
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query parameters)

    @property
    def url(self) -> str:
        """Base URL, like `KILN_OPENCOST_URL`."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def serve_file(self, name: str, *, status: int = 200, delay: float = 0.0) -> None:
        """Answer with `tests/data/opencost/NAME`."""
        self.reply = Reply(status, (DATA_DIR / name).read_bytes(), "application/json", delay)

    def serve_body(self, body: str, *, status: int = 200, content_type: str = "text/plain; charset=utf-8",
                   delay: float = 0.0) -> None:
        """Answer with this body (e.g. an error page)."""
        self.reply = Reply(status, body.encode(), content_type, delay)


class _Handler(BaseHTTPRequestHandler):
    fixture: OpenCostFixture

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        self.fixture.requests.append((parts.path, query))
        reply = self.fixture.reply
        if parts.path != "/allocation/compute":
            reply = Reply(404, b"404 page not found\n", "text/plain; charset=utf-8")
        if reply.delay:
            time.sleep(reply.delay)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read `fixture.requests` instead."""


@contextmanager
def opencost_server() -> Iterator[OpenCostFixture]:
    """Start the fixture server on a free loopback port; stop it afterwards."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    fixture = OpenCostFixture(server)
    server.RequestHandlerClass = type("Handler", (_Handler,), {"fixture": fixture})
    thread = threading.Thread(target=server.serve_forever, name="opencost-fixture", daemon=True)
    thread.start()
    try:
        yield fixture
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
