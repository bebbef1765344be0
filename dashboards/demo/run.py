"""`kiln demo`: the whole appliance on one machine, with no external services.

Embedded SQLite in the data dir; 48 simulated BMCs (IPMI 2.0 on loopback) that the real IPMI
collector polls; a simulated dcgm-exporter that the real exporter-scrape collector reads; a
month of history backfilled through the collectors' store; usage, rating and bills run by
metering; the API and console served by the same app as `kiln serve`; the worker's jobs in
this process. Runs until Ctrl-C.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.cycle import run_cycle
from collectors.sim.bmc import sim as bmc_sim
from collectors.sim.dcgm_exporter import DcgmExporterSim, SimGpu
from collectors.sources import build_sources
from dashboards.demo import seed
from dashboards.demo.history import backfill, last_backfilled
from fleet.models import Gpu, Node
from fleet.runtime import FleetRuntime
from fleet.tenancy_models import Lease
from fleet.usage import in_force
from kiln.app import create_app
from kiln.auth import Principal
from kiln.db import create_db_engine
from kiln.schema import upgrade
from kiln.settings import Settings
from kiln.worker import jobs_for
from metering.bills import run_period
from metering.budgets import check_alerts
from metering.periods import period_of

log = logging.getLogger("kiln.demo")
Say = Callable[[str], None]


def run_demo(host: str, port: int, data_dir: Path, *, say: Say = print, days: int = 30,
             stop: threading.Event | None = None) -> None:
    """Start everything, print the ready banner, and serve until interrupted (or `stop` is set)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    base = Settings(data_dir=data_dir, database_url=None, dev=True)
    engine = create_db_engine(base.resolved_database_url)
    upgrade(engine)
    say(f"starting {len(seed.node_names())} simulated BMCs on 127.0.0.1 ...")
    bmc_state = data_dir / "bmcsim"
    bmc_sim.stop(bmc_state)  # a previous demo killed hard may have left its simulators
    doc = bmc_sim.start(bmc_state, len(seed.node_names()), names=seed.node_names(), password="demo-bmc-password",
                        critical_every=13, detach=False)
    exporter = None
    try:
        bmcs = {b["name"]: b for b in doc["bmcs"]}
        runtime = FleetRuntime.build(base, engine)
        now = datetime.now(UTC)
        with Session(engine) as session:
            if seed.seeded(session):
                seed.refresh_bmcs(session, runtime, bmcs)
            else:
                say("creating the demo fleet, tenants, VDCs, leases and price cards ...")
                seed.seed(session, runtime, bmcs, now)
            session.commit()
        _power_idle_nodes_off(engine, bmc_state, now)
        _backfill(engine, bmcs, now, days, say)
        exporter = DcgmExporterSim(_gpus(engine), busy=_lease_checker(engine), clock=lambda: datetime.now(UTC)).start()
        settings = Settings(data_dir=data_dir, dev=True, dcgm_exporter_urls=exporter.url, ipmi_interval=15,
                            gpu_interval=15, sync_interval=300)
        _bill(engine, settings, now, say)
        scheduler = _start_worker(settings, engine, runtime, say)
        try:
            _serve(settings, engine, host, port, data_dir, exporter.url, say, stop)
        finally:
            scheduler.shutdown(wait=False)
    finally:
        if exporter is not None:
            exporter.stop()
        bmc_sim.stop(bmc_state)
        engine.dispose()


def _power_idle_nodes_off(engine: Engine, bmc_state: Path, now: datetime) -> None:
    """Nodes nobody leases are powered off (their BMCs then read standby watts)."""
    with Session(engine) as session:
        leased = set(session.exec(select(Lease.node_id).where(in_force(now))).all())
        for node in session.exec(select(Node).where(Node.name.in_(seed.node_names()))):
            on = node.id in leased
            bmc_sim.control(bmc_state, node.name, "power", state="on" if on else "off")
            node.power_state = "power on" if on else "power off"
            session.add(node)
        session.commit()


def _backfill(engine: Engine, bmcs: dict[str, dict], now: datetime, days: int, say: Say) -> None:
    start = last_backfilled(engine)
    since = (start + timedelta(hours=1)) if start else (now - timedelta(days=days)).replace(minute=0, second=0,
                                                                                          microsecond=0)
    until = now.replace(minute=0, second=0, microsecond=0)
    if since > until:
        return
    say(f"backfilling {(until - since) / timedelta(days=1):.1f} days of power, temperature and GPU utilisation ...")
    backfill(engine, bmcs, since, until)


def _bill(engine: Engine, settings: Settings, now: datetime, say: Say) -> None:
    """Usage, rating and draft bills for last month and this month; budget alerts."""
    system = Principal.system("kiln-demo")
    this = period_of(now)
    last = period_of(now.replace(day=1) - timedelta(days=1))
    for period in (last, this):
        with Session(engine) as session:
            summary = run_period(session, system, period, policy=settings.idle_cost_policy, now=now)
            check_alerts(session, system, period, now=now)
            session.commit()
        say(f"billed {period}: {len(summary.drafts)} draft bills, idle cost {summary.idle_cost}")


def _gpus(engine: Engine) -> list[SimGpu]:
    with Session(engine) as session:
        rows = session.exec(select(Gpu, Node.name).join(Node, Node.id == Gpu.node_id).order_by(Node.name, Gpu.index))
        return [SimGpu(name, gpu.index, gpu.uuid, gpu.model) for gpu, name in rows if gpu.uuid]


def _lease_checker(engine: Engine) -> Callable[[str], bool]:
    """busy(node name): is the node leased now (cached for 10 s)."""
    cache: dict[str, object] = {"at": 0.0, "busy": set()}
    lock = threading.Lock()

    def busy(node: str) -> bool:
        with lock:
            if time.monotonic() - cache["at"] > 10:
                with Session(engine) as session:
                    cache["busy"] = set(session.exec(select(Node.name).join(Lease, Lease.node_id == Node.id)
                                                     .where(in_force(datetime.now(UTC)))).all())
                cache["at"] = time.monotonic()
            return node in cache["busy"]

    return busy


def _start_worker(settings: Settings, engine: Engine, runtime: FleetRuntime, say: Say) -> BackgroundScheduler:
    """The worker's jobs in this process; one collection cycle first so the console has data now."""
    for source in build_sources(settings, engine, runtime.box).values():
        report = run_cycle(engine, source)
        source.close()
        say(f"collected {source.name}: {report.counts()}")
    scheduler = BackgroundScheduler(timezone="UTC")
    for job in jobs_for(settings, engine, runtime):
        scheduler.add_job(job.run, "interval", seconds=job.seconds, id=job.name, max_instances=1, coalesce=True)
    scheduler.start()
    return scheduler


def _serve(settings: Settings, engine: Engine, host: str, port: int, data_dir: Path, exporter_url: str, say: Say,
           stop: threading.Event | None) -> None:
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=engine), host=host, port=port,
                                           log_level="warning", lifespan="off"))
    url = f"http://{host}:{port}/"

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            say(_banner(url, data_dir, exporter_url))
        if stop is not None:
            stop.wait()
            server.should_exit = True

    threading.Thread(target=announce, name="demo-banner", daemon=True).start()
    server.run()


def _banner(url: str, data_dir: Path, exporter_url: str) -> str:
    users = seed.logins()
    members = [u for u in users if u.username in seed.MEMBERS]
    lines = [
        f"Kiln demo ready at {url}",
        f"  sign in with password {seed.DEMO_PASSWORD!r} as:",
        "    admin (infra-admin), finance (finance), "
        + ", ".join(f"{u.username} (tenant {u.tenant})" for u in members),
        f"    and one tenant admin per tenant: {', '.join(f'{slug}-admin' for slug in seed.TENANTS)}",
        f"  tenants: {', '.join(seed.TENANTS)}",
        (f"  fleet: {len(seed.node_names())} nodes on simulated BMCs (IPMI 2.0, 127.0.0.1), GPU metrics from a"
         f" simulated dcgm-exporter at {exporter_url}"),
        f"  data: {data_dir}  (API tokens: KILN_DATA_DIR={data_dir} kiln tokens create USER)",
        "  Ctrl-C to stop.",
    ]
    return "\n".join(lines)
