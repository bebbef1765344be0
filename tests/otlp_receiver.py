"""An OTLP/HTTP traces receiver on loopback, for the tests of Kiln's tracing.

A stand-in: no real receiver can run here (the OpenTelemetry Collector and Jaeger are Go
programs, on none of the registries this machine reaches as a binary, and this machine's Go
is too old to build them). It keeps to upstream's side of the wire: each `POST /v1/traces`
body is decoded with the official `opentelemetry-proto` package (the OTLP schema,
ExportTraceServiceRequest; gzip when Content-Encoding says so) and answered as the OTLP/HTTP
specification says: 200 with a protobuf ExportTraceServiceResponse, or 400 for a body that
does not decode, 404 for another path, 415 for another content type.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.loopback import serving

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived: its resource's service.name, and the span's own fields."""

    service: str
    name: str
    kind: str  # SPAN_KIND_SERVER, SPAN_KIND_INTERNAL, ...
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status: str  # STATUS_CODE_UNSET, STATUS_CODE_OK, STATUS_CODE_ERROR
    events: tuple[str, ...]


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    return getattr(value, field) if field else None


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ExportTraceServiceRequest (DecodeError when it is not one)."""
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    service=resource.get("service.name", ""), name=span.name, kind=Span.SpanKind.Name(span.kind),
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    status=Status.StatusCode.Name(span.status.code), events=tuple(e.name for e in span.events),
                ))
    return spans


class OtlpReceiver:
    """The spans received so far, and the receiver's base URL (what KILN_OTLP_ENDPOINT names)."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        self.url = ""

    def receive(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        """Answer one POST as an OTLP/HTTP receiver does."""
        headers = {name.lower(): value for name, value in headers.items()}
        if path != "/v1/traces":
            return 404, "text/plain", b"only /v1/traces"
        if headers.get("content-type", "").split(";")[0] != PROTOBUF:
            return 415, "text/plain", b"application/x-protobuf only"
        try:
            spans = decode(gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body)
        except DecodeError:
            return 400, "text/plain", b"not an ExportTraceServiceRequest"
        with self._lock:
            self.spans.extend(spans)
            self.requests += 1
        return 200, PROTOBUF, ExportTraceServiceResponse().SerializeToString()

    def wait_for(self, name: str, timeout: float = 20, **attributes: Any) -> list[ReceivedSpan]:
        """The spans called `name` (or starting with it, ending in '*') with these attribute
        values (`**{"kiln.collector": "ipmi"}`), once at least one has come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.named(name) if all(s.attributes.get(k) == v for k, v in attributes.items())]
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no span {name!r} within {timeout} s; got {sorted({s.name for s in self.spans})}")

    def named(self, name: str) -> list[ReceivedSpan]:
        """The spans received so far called `name` (a trailing '*' matches a prefix)."""
        with self._lock:
            if name.endswith("*"):
                return [s for s in self.spans if s.name.startswith(name[:-1])]
            return [s for s in self.spans if s.name == name]


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OtlpReceiver listening on loopback for the duration of the block."""
    receiver = OtlpReceiver()
    with serving(lambda path, headers: (405, "text/plain", b"POST only"), receiver.receive) as server:
        receiver.url = server.url
        yield receiver


