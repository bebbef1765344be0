"""A small HTTP server on loopback answering GETs (and POSTs) from functions: the stand-in for an
exporter, an intensity API, an OTLP receiver or any upstream a test serves recorded or built output from."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (path, request headers) -> (status, content type, body)
Answer = Callable[[str, dict[str, str]], tuple[int, str, bytes]]
# (path, request headers, request body) -> (status, content type, body)
AnswerPost = Callable[[str, dict[str, str], bytes], tuple[int, str, bytes]]


class LoopbackServer:
    """Serves `answer` (GET) and `answer_post` (POST, 405 without one) on 127.0.0.1 at a free port until `close()`."""

    def __init__(self, answer: Answer, answer_post: AnswerPost | None = None) -> None:
        self.answer = answer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.reply(*answer(self.path, dict(self.headers)))

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if answer_post is None:
                    self.reply(405, "text/plain", b"GET only")
                else:
                    self.reply(*answer_post(self.path, dict(self.headers), body))

            def reply(self, status: int, content_type: str, body: bytes) -> None:
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
def serving(answer: Answer, answer_post: AnswerPost | None = None) -> Iterator[LoopbackServer]:
    """A LoopbackServer for the duration of the block."""
    server = LoopbackServer(answer, answer_post)
    try:
        yield server
    finally:
        server.close()
