"""`kiln demo`: the whole appliance on one machine, with no external services.

Embedded SQLite in the data dir; 48 simulated BMCs (IPMI 2.0 on loopback) that the real IPMI
collector polls; a simulated dcgm-exporter that the real exporter-scrape collector reads; a
month of history backfilled through the collectors' store; usage, rating and bills run by
metering; the API and console served by the same app as `kiln serve`; the worker's jobs in
this process. The fleet is provisioned through Kiln's own operations on the fake driver (whose
power actions switch the simulated BMCs), and its watts, temperatures and GPU readings come
from one physical model (`dashboards.demo.physics`). Runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import logging
import os
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
from collectors.sim.dcgm_exporter import DcgmExporterSim
from collectors.sources import build_sources
from dashboards.demo import seed
from dashboards.demo.history import backfill, last_backfilled
from dashboards.demo.physics import DemoNode, LiveFleet, demo_nodes
from fleet.models import Node
from fleet.nodes import list_nodes
from fleet.operations import ActionParams, plan_action
from fleet.provisioning.actions import Action
from fleet.provisioning.fake import FakeDriver
from fleet.provisioning.registry import Drivers
from fleet.provisioning.states import PowerState
from fleet.runtime import FleetRuntime
from fleet.tenancy_models import Lease
from fleet.usage import in_force
from kiln.app import create_app
from kiln.auth import Principal
from kiln.db import create_db_engine
from kiln.long_lived import serve_long_lived
from kiln.schema import upgrade
from kiln.settings import Settings, load_settings
from kiln.worker import jobs_for
from metering.bills import run_period
from metering.budgets import CarbonContext, check_alerts
from metering.periods import period_of

log = logging.getLogger("kiln.demo")
Say = Callable[[str], None]


# Demo defaults: collect often so the console moves while you watch. A KILN_* variable wins.
DEMO_INTERVALS = {"ipmi_interval": 15, "gpu_interval": 15, "sync_interval": 60}
PHYSICS_INTERVAL = 5  # seconds between pushes of GPU-driven watts and temperatures to the BMCs
DEMO_IMAGE = ActionParams(image_url="http://images.demo.invalid/ubuntu-22.04-cuda-12.4.qcow2",
                          image_checksum="sha256:" + "5e" * 32)


def run_demo(host: str, port: int, data_dir: Path, *, say: Say = print, days: int = seed.HISTORY_DAYS,
             stop: threading.Event | None = None) -> None:
    """Start everything, print the ready banner, and serve until interrupted (or `stop` is set)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(data_dir)
    engine = create_db_engine(settings.resolved_database_url)
    upgrade(engine)
    say(f"starting {len(seed.node_names())} simulated BMCs on 127.0.0.1 ...")
    bmc_state = data_dir / "bmcsim"
    bmc_sim.stop(bmc_state)  # a previous demo killed hard may have left its simulators
    doc = bmc_sim.start(bmc_state, len(seed.node_names()), names=seed.node_names(), password="demo-bmc-password",
                        critical_every=13, detach=False)
    exporter = None
    try:
        bmcs = {b["name"]: b for b in doc["bmcs"]}
        # One runtime for the API, the console and the worker's jobs: one fake driver, one truth.
        # Its power actions switch the simulated BMCs, as Ironic's IPMI power interface would.
        fake = FakeDriver(on_power=lambda name, state: bmc_sim.control(
            bmc_state, name, "power", state="on" if state == PowerState.ON else "off"))
        runtime = FleetRuntime.build(settings, engine, Drivers(settings, fake=fake))
        now = datetime.now(UTC)
        with Session(engine) as session:
            first_run = not seed.seeded(session)
            if first_run:
                say("creating the demo fleet, tenants, VDCs, leases and price cards ...")
                seed.seed(session, runtime, bmcs, now)
            else:
                seed.refresh_bmcs(session, runtime, bmcs)
            session.commit()
        if first_run:
            _bring_up(engine, runtime, settings.bulk_concurrency, now, say)
        _match_bmc_power(engine, bmc_state)
        nodes = demo_nodes(engine, bmcs)  # one read of the fleet for the backfill, the BMCs and the exporter
        _backfill(engine, nodes, now, days, say)
        fleet = LiveFleet(engine, bmc_state, nodes)
        fleet.tick()
        exporter = DcgmExporterSim([gpu for node in nodes for gpu in node.gpus], busy=fleet.busy,
                                   clock=lambda: datetime.now(UTC), powered=fleet.powered).start()
        settings = settings.model_copy(update={"dcgm_exporter_urls": exporter.url})
        _bill(engine, settings, now, say)
        scheduler = _start_worker(settings, engine, runtime, fleet, say)
        try:
            _serve(settings, engine, runtime, host, port, data_dir, exporter.url, say, stop)
        finally:
            scheduler.shutdown(wait=False)
    finally:
        if exporter is not None:
            exporter.stop()
        bmc_sim.stop(bmc_state)
        engine.dispose()


def demo_settings(data_dir: Path) -> Settings:
    """The demo's settings: its own SQLite database in `data_dir`, development mode, and the
    demo's collection intervals unless a KILN_* variable sets them."""
    intervals = {k: v for k, v in DEMO_INTERVALS.items() if f"KILN_{k.upper()}" not in os.environ}
    return load_settings(data_dir=data_dir, dev=True, **intervals).model_copy(update={"database_url": None})


def _bring_up(engine: Engine, runtime: FleetRuntime, concurrency: int, now: datetime, say: Say) -> None:
    """Provision the new fleet through Kiln, as an operator would: manage, provide (cleaning) and
    deploy every node, then power off the nodes nobody leases."""
    system = Principal.system("kiln-demo")
    steps = [(Action.MANAGE, ActionParams()), (Action.PROVIDE, ActionParams()), (Action.DEPLOY, DEMO_IMAGE)]
    with Session(engine) as session:
        leased = set(session.exec(select(Lease.node_id).where(in_force(now))).all())
    for action, params in steps + [(Action.POWER_OFF, ActionParams())]:
        with Session(engine, expire_on_commit=False) as session:
            nodes = list_nodes(session, system, names=seed.node_names())
            if action == Action.POWER_OFF:
                nodes = [n for n in nodes if n.id not in leased]
            operations = plan_action(session, system, nodes, action, params)
            session.commit()
        outcomes = runtime.runner.run_many([o.id for o in operations], concurrency)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise RuntimeError(f"demo bring-up: {action.value} failed on {failed[0].node}: {failed[0].error}")
        say(f"{action.value}: {len(outcomes)} nodes")


def _match_bmc_power(engine: Engine, bmc_state: Path) -> None:
    """Each simulated BMC's chassis as Kiln last knew the node (the simulators start powered on)."""
    with Session(engine) as session:
        for name, power in session.exec(select(Node.name, Node.power_state).where(Node.name.in_(seed.node_names()))):
            bmc_sim.control(bmc_state, name, "power", state="on" if power == PowerState.ON else "off")


def _backfill(engine: Engine, nodes: list[DemoNode], now: datetime, days: int, say: Say) -> None:
    start = last_backfilled(engine)
    since = (start + timedelta(hours=1)) if start else (now - timedelta(days=days)).replace(minute=0, second=0,
                                                                                          microsecond=0)
    until = now.replace(minute=0, second=0, microsecond=0)
    if since > until:
        return
    say(f"backfilling {(until - since) / timedelta(days=1):.1f} days of power, temperature and GPU utilisation ...")
    backfill(engine, nodes, since, until)


def _bill(engine: Engine, settings: Settings, now: datetime, say: Say) -> None:
    """Usage, rating and draft bills for last month and this month; budget alerts."""
    system = Principal.system("kiln-demo")
    this = period_of(now)
    last = period_of(now.replace(day=1) - timedelta(days=1))
    for period in (last, this):
        with Session(engine) as session:
            summary = run_period(session, system, period, policy=settings.idle_cost_policy, now=now)
            check_alerts(session, system, period, now=now, carbon=CarbonContext.of(settings))
            session.commit()
        say(f"billed {period}: {len(summary.drafts)} draft bills, idle cost {summary.idle_cost}")


def _start_worker(settings: Settings, engine: Engine, runtime: FleetRuntime, fleet: LiveFleet,
                  say: Say) -> BackgroundScheduler:
    """The worker's jobs and the fleet's physics in this process; one collection cycle first so
    the console has data now."""
    for source in build_sources(settings, engine, runtime.box, one_shot=True).values():
        report = run_cycle(engine, source)
        source.close()
        say(f"collected {source.name}: {report.counts()}")
    scheduler = BackgroundScheduler(timezone="UTC")
    for job in jobs_for(settings, engine, runtime):
        scheduler.add_job(job.run, "interval", seconds=job.seconds, id=job.name, max_instances=1, coalesce=True)
    scheduler.add_job(fleet.tick, "interval", seconds=PHYSICS_INTERVAL, id="demo-physics", max_instances=1, coalesce=True)
    scheduler.start()
    return scheduler


def _serve(settings: Settings, engine: Engine, runtime: FleetRuntime, host: str, port: int, data_dir: Path,
           exporter_url: str, say: Say, stop: threading.Event | None) -> None:
    app = create_app(settings, engine=engine)
    app.state.fleet = runtime  # the API's actions go through the same fake driver as the worker's sync
    serve_long_lived(app)  # a long-running server, as `kiln serve`
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
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
