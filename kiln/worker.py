"""`kiln worker`: the scheduler that runs Kiln's periodic jobs.

Jobs are declared here once with their purpose and spacing; each runs on its own thread,
start to start every `seconds` (`run_paced`): never two runs of one job at once, a run that
outlasts its interval is followed at once by the next (not one interval later), and a
failing run is logged with its traceback and retried on the next tick without stopping the
others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server
from sqlalchemy import Engine

from collectors.cycle import run_cycle
from collectors.sharding import default_worker_name, lease_length, retire_worker
from collectors.sources import Source, build_sources
from fleet.runtime import FleetRuntime
from fleet.sync import sync_nodes
from kiln.db import utcnow
from kiln.metrics import WorkerMetrics
from kiln.partitions import ensure_partitions_now
from kiln.retention import INTERVAL, Removed, enforce_retention
from kiln.settings import Settings
from metering.carbon_intensity import fetch_job as carbon_fetch_job
from metering.jobs import draft_bills

log = logging.getLogger("kiln.worker")


@dataclass(frozen=True)
class Job:
    """A periodic job: what it does and how often."""

    name: str
    seconds: int
    run: Callable[[], None]


def jobs_for(settings: Settings, engine: Engine, fleet: FleetRuntime | None = None,
             metrics: WorkerMetrics | None = None) -> list[Job]:
    """Every periodic job of this Kiln, bound to its settings and database; collector cycles and
    bills runs observe their durations into `metrics`."""
    fleet = fleet or FleetRuntime.build(settings, engine)
    metrics = metrics or WorkerMetrics(CollectorRegistry())
    last_summary = {"sync": ""}

    def sync() -> None:
        report = sync_nodes(engine, fleet.drivers, fleet.box)
        summary = report.summary()
        noteworthy = report.changed or report.missing or report.errors
        if noteworthy and summary != last_summary["sync"]:
            log.info("node sync: %s", summary)
        last_summary["sync"] = summary if noteworthy else ""

    run_bills = draft_bills(settings, engine)

    def bills() -> None:
        with metrics.bills_run.time():
            run_bills()

    jobs = [Job("node-state-sync", settings.sync_interval, sync), Job("draft-bills", settings.billing_interval, bills)]
    if engine.dialect.name == "postgresql":
        jobs.append(Job("partitions-ahead", INTERVAL, lambda: _log_created(ensure_partitions_now(engine, utcnow()))))
    jobs.append(Job("retention", INTERVAL, lambda: _log_removed(enforce_retention(engine, settings, utcnow()))))
    if settings.carbon_url:
        jobs.append(Job("carbon-fetch", 3600, carbon_fetch_job(settings, engine)))
    owner = settings.worker_name or default_worker_name()
    for source in build_sources(settings, engine, fleet.box).values():
        jobs.append(Job(f"collect-{source.name}", source.interval, _collect(engine, source, owner, metrics)))
    return jobs


def _log_created(names: list[str]) -> None:
    if names:
        log.info("created partitions %s", ", ".join(names))


def _log_removed(removed: list[Removed]) -> None:
    for table in removed:
        if table.rows or table.partitions:
            log.info("retention: %s lost %d old rows%s", table.table, table.rows,
                     f" and partitions {', '.join(table.partitions)}" if table.partitions else "")


def _collect(engine: Engine, source: Source, owner: str, metrics: WorkerMetrics) -> Callable[[], None]:
    lease = lease_length(source.interval)

    def run() -> None:
        with metrics.cycle.labels(source.name).time():
            report = run_cycle(engine, source, owner=owner, lease=lease)
        log.debug("%s: %s of %d targets polled here", source.name, report.counts(), report.total_targets)

    return run


def run_forever(settings: Settings, engine: Engine) -> None:
    """Run every job on its interval until interrupted; serve their durations on /metrics."""
    registry = CollectorRegistry()
    if settings.worker_metrics_port:
        _serve_metrics(settings, registry)
    stop = threading.Event()
    for job in jobs_for(settings, engine, metrics=WorkerMetrics(registry)):
        threading.Thread(target=run_paced, args=(job, stop), name=f"kiln-{job.name}").start()
        log.info("scheduled %s every %d s", job.name, job.seconds)
    try:
        while not stop.wait(1.0):  # a timed wait: Ctrl-C reaches the main thread
            pass
    finally:
        stop.set()  # each job's thread ends after its current run
        retire_worker(engine, settings.worker_name or default_worker_name())


def run_paced(job: Job, stop: threading.Event, clock: Callable[[], float] = time.monotonic,
              wait: Callable[[float], object] | None = None) -> None:
    """Run `job` now and then every `seconds`, start to start (a run's length does not move the
    next: a BMC is polled every interval, not every interval + cycle), until `stop` is set. A
    run that outlasts its interval is followed at once by the next, never overlapped by it."""
    wait = wait or stop.wait
    run, next_start = _guarded(job), clock()
    while not stop.is_set():
        run()
        next_start = max(next_start + job.seconds, clock())
        wait(max(0.0, next_start - clock()))


def _serve_metrics(settings: Settings, registry: CollectorRegistry) -> None:
    """Serve the worker's /metrics; a port already taken (a second worker on this host) is
    logged and the worker runs on without: its jobs matter more than their durations."""
    address = f"{settings.worker_metrics_host}:{settings.worker_metrics_port}"
    try:
        start_http_server(settings.worker_metrics_port, settings.worker_metrics_host, registry=registry)
    except OSError as exc:
        log.warning("cannot serve metrics on %s (%s): set KILN_WORKER_METRICS_PORT to a free port, "
                    "or 0; running without", address, exc.strerror or exc)
        return
    log.info("metrics on http://%s/metrics", address)


def _guarded(job: Job) -> Callable[[], None]:
    def run() -> None:
        try:
            job.run()
        except Exception:  # the outermost job runner: log the traceback, try again next tick
            log.exception("job %s failed", job.name)

    return run
