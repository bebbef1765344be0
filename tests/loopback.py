"""A small HTTP server on loopback answering GETs from a function: the stand-in for an exporter,
an intensity API or any upstream a test serves recorded or built output from."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (path, request headers) -> (status, content type, body)
Answer = Callable[[str, dict[str, str]], tuple[int, str, bytes]]


class LoopbackServer:
    """Serves `answer` on 127.0.0.1 at a free port until `close()`."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                status, content_type, body = answer(self.path, dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.port = self.http.server_port
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop serving and free the port."""
        self.http.shutdown()
        self.http.server_close()


@contextmanager
def serving(answer: Answer) -> Iterator[LoopbackServer]:
    """A LoopbackServer for the duration of the block."""
    server = LoopbackServer(answer)
    try:
        yield server
    finally:
        server.close()
