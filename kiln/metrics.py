"""Prometheus metrics of the Kiln processes themselves: HTTP requests, latency, build info
(the API's `/metrics`), and the durations of collector cycles and bills runs (the worker's).

Each app or worker owns its registry (no global state), which its `/metrics` serves;
collectors register their own families into the API's registry. The worker runs the cycles
and bills, so it serves its own `/metrics` on KILN_WORKER_METRICS_PORT.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln import __version__

CYCLE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300)
BILLS_RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def build_info(registry: CollectorRegistry) -> None:
    """`kiln_build_info{version=...} 1` in `registry`."""
    Info("kiln_build", "Kiln build information", registry=registry).info({"version": __version__})


class WorkerMetrics:
    """How long the worker's collector cycles (per collector) and bills runs take."""

    def __init__(self, registry: CollectorRegistry):
        self.cycle = Histogram(
            "kiln_collector_cycle_duration_seconds", "Duration of one collection cycle of a collector on this worker",
            ["collector"], registry=registry, buckets=CYCLE_BUCKETS,
        )
        self.bills_run = Histogram(
            "kiln_bills_run_duration_seconds", "Duration of one run of the current period's bills (usage, rating, drafts, alerts)",
            registry=registry, buckets=BILLS_RUN_BUCKETS,
        )
        build_info(registry)


class HttpMetrics:
    """Request count and latency by method, route template and status."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "kiln_http_requests", "HTTP requests handled", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "kiln_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        build_info(registry)


class MetricsMiddleware:
    """ASGI middleware that observes every HTTP request into HttpMetrics."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
