"""OpenTelemetry traces of Kiln's work, sent over OTLP/HTTP (protobuf) to `KILN_OTLP_ENDPOINT`.

Spans: API requests (kiln.request_context), collector cycles (collectors.cycle), bills runs
(metering.bills) and provisioning operations (fleet.operations), so a trace store such as
Tempo or Jaeger shows where the time of each went. With no endpoint (the default) `span()`
hands out a do-nothing span and OpenTelemetry is never imported: tracing off costs nothing.

The tracer provider is this process's, set once at start-up by `configure_tracing` (the
server, the worker, a CLI command), like logging's handlers; log lines written inside a span
carry its trace and span ids (kiln.logs).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import copy_context
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

TRACES_PATH = "/v1/traces"
Result = TypeVar("Result")
_provider: TracerProvider | None = None
_exporting_to: tuple[str | None, str] | None = None  # (endpoint, service) of _provider


class NoSpan:
    """Stands for a span when tracing is off: every call does nothing."""

    def set_attribute(self, key: str, value: Any) -> None:
        """Nothing (tracing is off)."""

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Nothing (tracing is off)."""

    def update_name(self, name: str) -> None:
        """Nothing (tracing is off)."""


NO_SPAN = NoSpan()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of an endpoint given as its base (`http://collector:4318`), as
    OTEL_EXPORTER_OTLP_ENDPOINT is, or already as the traces URL."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def configure_tracing(endpoint: str | None, service: str, *, exporter: SpanExporter | None = None) -> bool:
    """Export this process's spans to `endpoint` from now on (None: tracing off); returns whether on.

    `service` names the process (`kiln-api`, `kiln-worker`, `kiln-cli`) as service.name;
    spans leave in batches from a background thread, so a slow receiver never slows Kiln."""
    global _provider, _exporting_to
    if exporter is None and _provider is not None and (endpoint, service) == _exporting_to:
        return True  # already exporting there (a CLI command loads its settings more than once)
    if _provider is not None:
        _provider.shutdown()
        _provider = _exporting_to = None
    if not endpoint and exporter is None:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from kiln import __version__

    resource = Resource.create({"service.name": service, "service.namespace": "kiln", "service.version": __version__,
                                "service.instance.id": f"{socket.gethostname()}:{service}"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=traces_url(endpoint or ""))))
    _provider, _exporting_to = provider, (endpoint, service)
    return True


def flush_traces(timeout_ms: int = 5000) -> None:
    """Send the spans still waiting in the batch (before a short-lived process exits)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def tracing_enabled() -> bool:
    """Whether spans are being recorded and exported."""
    return _provider is not None


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, kind: str = "internal",
         parent_headers: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A span around the block (NO_SPAN when tracing is off); an exception escaping the block is
    recorded on it and marks it failed. `kind`: internal, server or client; `parent_headers`:
    a request's headers, whose W3C `traceparent` makes the span a child of the caller's."""
    if _provider is None:
        yield NO_SPAN
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(parent_headers) if parent_headers else None
    tracer = _provider.get_tracer("kiln")
    clean = {key: value for key, value in (attributes or {}).items() if value is not None}
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind[kind.upper()], attributes=clean) as current:
        yield current


def mark_failed(current: Any, description: str) -> None:
    """Set a span's status to error (an HTTP 5xx, a failed operation); nothing when tracing is off."""
    if current is NO_SPAN:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_status(Status(StatusCode.ERROR, description[:500]))


def in_this_context(function: Callable[..., Result]) -> Callable[..., Result]:
    """`function`, to run in a copy of the caller's context: a thread pool's worker then writes
    the caller's log context (request id) and nests its spans under the caller's span."""
    context = copy_context()

    def run(*args: Any, **kwargs: Any) -> Result:
        return context.copy().run(function, *args, **kwargs)

    return run
