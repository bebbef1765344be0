"""`kiln worker`: the scheduler that runs Kiln's periodic jobs (APScheduler).

Jobs are declared here once with their purpose and spacing; each runs start to start every
`seconds` (`next_start`): when a run ends, the next is scheduled one interval after it began,
or at once if it outlasted its interval — never two runs of one job at once, and never an
interval skipped (an interval trigger with `max_instances=1` drops the start that falls inside
a long run, so a 61 s cycle meant 120 s between polls). A failing run is logged with its
traceback and retried on the next tick without stopping the others. Each collector has a second
job beside its cycles, `renew-leases-…`, that keeps a running cycle's target leases (so a cycle
longer than its lease keeps its targets: collectors/leases.py); the executor has a thread per
job, so that renewal never waits for a thread behind long runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from prometheus_client import CollectorRegistry, start_http_server
from sqlalchemy import Engine

from collectors.cycle import run_cycle
from collectors.leases import LeaseKeeper, renew_every
from collectors.sharding import default_worker_name, lease_length, retire_worker
from collectors.sources import Source, build_sources
from collectors.utilisation_days import SEAL_EVERY, seal_job
from fleet.runtime import FleetRuntime
from fleet.sync import sync_nodes
from kiln.db import utcnow
from kiln.long_lived import freeze_long_lived
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
    jobs.append(Job("utilisation-days", SEAL_EVERY, seal_job(engine)))
    jobs.append(Job("retention", INTERVAL, lambda: _log_removed(enforce_retention(engine, settings, utcnow()))))
    if settings.carbon_url:
        jobs.append(Job("carbon-fetch", 3600, carbon_fetch_job(settings, engine)))
    owner = settings.worker_name or default_worker_name()
    for source in build_sources(settings, engine, fleet.box).values():
        jobs.extend(collector_jobs(engine, source, owner, metrics))
    return jobs


def _log_created(names: list[str]) -> None:
    if names:
        log.info("created partitions %s", ", ".join(names))


def _log_removed(removed: list[Removed]) -> None:
    for table in removed:
        if table.rows or table.partitions:
            log.info("retention: %s lost %d old rows%s", table.table, table.rows,
                     f" and partitions {', '.join(table.partitions)}" if table.partitions else "")


def collector_jobs(engine: Engine, source: Source, owner: str, metrics: WorkerMetrics) -> list[Job]:
    """A collector's cycles, every interval, and the renewal of a running cycle's leases, every
    third of a lease (one `LeaseKeeper` shared by the two)."""
    lease = lease_length(source.interval)
    keeper = LeaseKeeper(engine, source.name, owner, lease)

    def run() -> None:
        with metrics.cycle.labels(source.name).time():
            report = run_cycle(engine, source, keeper=keeper)
        log.debug("%s: %s of %d targets polled here", source.name, report.counts(), report.total_targets)

    return [Job(f"collect-{source.name}", source.interval, run),
            Job(f"renew-leases-{source.name}", renew_every(lease), keeper.renew)]


def run_forever(settings: Settings, engine: Engine) -> None:
    """Run every job on its interval until interrupted; serve their durations on /metrics."""
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every run at INFO
    registry = CollectorRegistry()
    if settings.worker_metrics_port:
        _serve_metrics(settings, registry)
    jobs = jobs_for(settings, engine, metrics=WorkerMetrics(registry))
    # a thread per job: each runs once at a time (`pace`), so none waits for a free thread
    scheduler = BlockingScheduler(timezone="UTC", executors={"default": ThreadPoolExecutor(len(jobs))})
    for job in jobs:
        pace(scheduler, job, utcnow())
        log.info("scheduled %s every %d s", job.name, job.seconds)
    freeze_long_lived()  # the jobs and what they hold live as long as the process
    try:
        scheduler.start()
    finally:
        retire_worker(engine, settings.worker_name or default_worker_name())


def pace(scheduler: BaseScheduler, job: Job, start: datetime, clock: Callable[[], datetime] = utcnow) -> None:
    """Schedule one run of `job` at `start`; as it ends, it schedules the next (`next_start`)."""
    run = _guarded(job)

    def paced() -> None:
        run()
        pace(scheduler, job, next_start(start, job.seconds, clock()), clock)

    # one date job per run (its own id: the instance still finishing never blocks the next),
    # run however late the scheduler wakes
    scheduler.add_job(paced, "date", run_date=start, name=job.name, misfire_grace_time=None)


def next_start(started: datetime, seconds: int, now: datetime) -> datetime:
    """When the run after one that began at `started` starts: `seconds` later, start to start
    (a run's length does not move it: a BMC is polled every interval, not every interval +
    cycle), or `now` if the run outlasted its interval."""
    return max(started + timedelta(seconds=seconds), now)


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
