"""A loopback TCP proxy that breaks connections on demand, to test how clients of a real peer
(Ironic, Prometheus, ...) behave when a connection is reset under a request."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The first bytes of an HTTP/1.1 request: how the proxy tells a new request from a body.
REQUEST_STARTS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"OPTIONS ")


class FlakyProxy:
    """Forwards 127.0.0.1:`port` to `target`; while `breaks` is above zero, the next HTTP
    request on any connection is answered with a TCP reset (and `breaks` counts down).
    `requests` counts the requests seen, `broken` those reset."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.breaks = self.broken = self.requests = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        self._open += [client, upstream]
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        try:
            while data := client.recv(65536):
                if data.startswith(REQUEST_STARTS) and self._break_this_one():
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def _break_this_one(self) -> bool:
        with self._lock:
            self.requests += 1
            if self.breaks <= 0:
                return False
            self.breaks -= 1
            self.broken += 1
            return True

    def close(self) -> None:
        """Stop accepting and close every forwarded connection."""
        self._listener.close()
        for sock in self._open:
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy `source` to `sink` until either side closes."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        sink.close()


@contextmanager
def flaky_proxy(url: str) -> Iterator[FlakyProxy]:
    """A `FlakyProxy` in front of the HTTP service at `url` (http://HOST:PORT)."""
    host, port = url.split("://", 1)[1].rstrip("/").rsplit(":", 1)
    proxy = FlakyProxy((host, int(port)))
    try:
        yield proxy
    finally:
        proxy.close()
