"""The worker's sync job converges Kiln's view; `kiln vdcs` / `kiln leases` follow the CLI contract."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import Session, select

from fleet.models import Node, NodeEvent
from fleet.nodes import create_node, node_target
from fleet.provisioning.registry import Drivers
from fleet.runtime import FleetRuntime
from fleet.schemas import NodeCreate
from kiln.auth import Principal
from kiln.worker import Job, jobs_for, pace
from tests.cli_helpers import base_env, run
from tests.fleet_helpers import node_payload


def test_sync_job_records_changes_made_behind_kilns_back(settings, engine) -> None:
    fleet = FleetRuntime.build(settings, engine, Drivers(settings))
    with Session(engine, expire_on_commit=False) as session:
        node = create_node(session, Principal.system("test"), NodeCreate(**node_payload()), fleet.drivers, fleet.box)
        session.commit()
    fake = fleet.drivers.get("fake")
    fake.set_maintenance(node_target(node, fleet.box, []), True, "fan replaced by hand")
    fake.set_power(node_target(node, fleet.box, []), "power on")
    jobs = {job.name: job for job in jobs_for(settings, engine, fleet)}
    partitioned = ["partitions-ahead"] if engine.dialect.name == "postgresql" else []
    # no Prometheus configured: no GPU collectors; IPMI and Redfish BMCs are always polled, each
    # with the renewal of its running cycle's leases
    assert sorted(jobs) == ["collect-ipmi", "collect-redfish", "draft-bills", "node-state-sync", *partitioned,
                            "renew-leases-ipmi", "renew-leases-redfish", "retention", "utilisation-days"]
    job = jobs["node-state-sync"]
    job.run()
    with Session(engine) as session:
        stored = session.get(Node, node.id)
        assert (stored.maintenance, stored.maintenance_reason, stored.power_state) == (True, "fan replaced by hand", "power on")
        events = session.exec(select(NodeEvent).where(NodeEvent.node_id == node.id, NodeEvent.kind == "state")).all()
        assert [e.message for e in events] == ["changed outside Kiln: power power off → power on, maintenance False → True"]
    job.run()  # nothing changed since: no new event
    with Session(engine) as session:
        assert len(session.exec(select(NodeEvent).where(NodeEvent.kind == "state")).all()) == 1


class _ManualScheduler:
    """APScheduler's `add_job` for date jobs, fired by hand on a fake clock."""

    def __init__(self) -> None:
        self.due: list[tuple[datetime, Callable[[], None]]] = []

    def add_job(self, func, trigger, *, run_date, name, misfire_grace_time) -> None:
        assert trigger == "date" and misfire_grace_time is None  # a late wake-up still runs it
        self.due.append((run_date, func))


def test_jobs_run_start_to_start_and_an_overrun_is_followed_at_once() -> None:
    """A 60 s collector cycle starts 60 s after the last one started, whatever that one took; one
    that takes longer than 60 s is followed at once (not overlapped, no interval skipped)."""
    origin = datetime(2026, 12, 6, tzinfo=UTC)
    now, starts, lengths = [origin], [], [45.0, 70.0, 10.0, 59.0, 0.5]
    scheduler = _ManualScheduler()

    def cycle() -> None:
        assert not scheduler.due, "the next run is scheduled only once this one has ended"
        starts.append((now[0] - origin).total_seconds())
        now[0] += timedelta(seconds=lengths[len(starts) - 1])

    pace(scheduler, Job("collect-ipmi", 60, cycle), origin, clock=lambda: now[0])
    while len(starts) < len(lengths):
        (run_date, run), = scheduler.due
        scheduler.due.clear()
        now[0] = max(now[0], run_date)  # the scheduler wakes at the run date
        run()
    assert starts == [0.0, 60.0, 130.0, 190.0, 250.0]


def test_vdc_and_lease_commands(engine, tmp_path: Path) -> None:
    env = base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False), KILN_SECRET_KEY="k" * 40)
    csv = tmp_path / "nodes.csv"
    csv.write_text("name,provisioner,bmc_address,bmc_username,bmc_password,rack,gpu_model,gpu_count\n"
                   "n1,fake,ipmi://10.0.0.1,a,b,r1,NVIDIA H100 80GB HBM3,8\n"
                   "n2,fake,ipmi://10.0.0.2,a,b,r1,NVIDIA H100 80GB HBM3,8\n")
    assert run(env, "nodes", "import", str(csv)).returncode == 0
    assert run(env, "tenants", "create", "acme").returncode == 0
    assert run(env, "vdcs", "create", "train", "--selector", "rack=r1", "--max-gpus", "16").returncode == 0
    assert run(env, "vdcs", "grant", "train", "acme", "--max-nodes", "1").returncode == 0
    assert run(env, "leases", "create", "n1", "acme").returncode == 0
    refused = run(env, "leases", "create", "n2", "acme")
    assert refused.returncode == 1 and refused.stderr.startswith("kiln: error: quota exceeded: tenant 'acme'")
    leases = json.loads(run(env, "leases", "list", "--output", "json").stdout)
    assert [(l["node"], l["tenant"], l["vdc"], l["ends_at"]) for l in leases] == [("n1", "acme", "train", None)]
    shown = json.loads(run(env, "nodes", "show", "n1", "--output", "json").stdout)
    assert len(shown["gpus"]) == 8 and shown["bmc_password_set"] and "bmc_password" not in shown
    assert [e["kind"] for e in shown["events"]][:2] == ["lease", "enrolled"]
    assert run(env, "leases", "end", str(leases[0]["id"])).returncode == 0
    assert json.loads(run(env, "leases", "list", "--active", "--output", "json").stdout) == []
    vdcs = json.loads(run(env, "vdcs", "list", "--output", "json").stdout)
    assert vdcs[0]["member_nodes"] == ["n1", "n2"] and vdcs[0]["tenants"][0]["max_nodes"] == 1
    bad = run(env, "leases", "create", "n2", "acme", "--start", "2026-10-01T00:00:00")
    assert bad.returncode == 1 and "needs a time zone" in bad.stderr
