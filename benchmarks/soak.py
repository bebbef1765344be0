"""Soak: `kiln serve` + 2 `kiln worker`s on PostgreSQL, 1,000 simulated BMCs and a loaded API
for 10 minutes, while one worker is killed (SIGKILL) and restarted and PostgreSQL is restarted.

    python -m benchmarks.soak [--minutes 10] [--bmcs 1000] [--interval 30] [--rps 20] [--quick]

Peers, all on 127.0.0.1 and started here: a private PostgreSQL 15 cluster (initdb in a
temporary directory, its own port: restarting it disturbs nobody else), the BMC simulator
(`tests/peers/bmcsim.sh`, constant DCMI watts per BMC). Every node is leased to one of 10
tenants from an hour before the start. Timeline: workers and API start; a bounded request
loop (`--rps` requests a second at most, 8 threads, until the end) reads nodes, node health,
tenants and /readyz; at 30 % worker 2 is killed, at 30 % + `--down` seconds it is started
again under the same name (as systemd restarts it); at 60 % PostgreSQL is restarted
(`pg_ctl restart -m fast`). Then everything stops and the database is checked:

- `api`: requests, errors (any non-200 or connection error), p50/p99 latency in ms;
- `polls`: IPMI polls persisted (`rollup_5m` counts of the DCMI series) vs expected
  (each node's active span / interval), and the per-node max (a node polled twice a cycle by
  two workers would exceed its expected count);
- `energy`: for every node, the seconds its `node_energy_hour` rows cover against the span
  between its first and last stored DCMI reading (`health_snapshot`, watched every 2 s):
  `lost_s` and `doubled_s` beyond the rounding of each poll's share (0.5 s), and kWh against
  the simulator's watts;
- `usage`: `build_usage` over the hours of the run (as once they are over): every (node, hour) has exactly one lease
  row per SKU and, where energy was measured, one energy row whose kWh equals the node's
  `node_energy_hour` kWh — `hours_lost` and `hours_doubled` count the exceptions.

`ok` is true when no energy second or usage hour was lost or doubled and at least 90 % of the
expected polls completed. One JSON line on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import func, insert, select, text
from sqlmodel import Session

REPO = Path(__file__).resolve().parent.parent
KILN = str(Path(sys.executable).parent / "kiln")
SECRET_KEY = "soak-secret-key-" + "k" * 40
TENANTS = 10


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a loopback port (as user postgres when run as root)."""

    def __init__(self, workdir: Path) -> None:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not versions:
            raise SystemExit("PostgreSQL server binaries not found: apt-get install postgresql")
        self.bin, self.port = versions[-1].parent, free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="kiln-soak-pg-", dir=workdir))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(workdir, "postgres")
            shutil.chown(self.dir, "postgres")
        self.url = f"postgresql+psycopg://kiln@127.0.0.1:{self.port}/kiln"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        """initdb (first time) and start; a database `kiln` owned by superuser `kiln`."""
        if not (self.dir / "data").exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "kiln", "-A", "trust", "--no-sync")
            fresh = True
        else:
            fresh = False
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                  "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c max_connections=200", "start")
        if fresh:
            self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "kiln", "kiln")

    def restart(self) -> None:
        """A fast restart (open connections are cut, as in a failover)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def bmc_simulator(state: Path, count: int) -> Iterator[list[dict]]:
    """`count` simulated BMCs; their bmcs.json entries."""
    script = str(REPO / "tests" / "peers" / "bmcsim.sh")
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", script, "start", str(state), str(count), "--critical-every", "0"], env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=300)
    try:
        yield json.loads((state / "bmcs.json").read_text())["bmcs"]
    finally:
        subprocess.run(["bash", script, "stop", str(state)], env=env, stdout=subprocess.DEVNULL, timeout=120)


def seed(url: str, bmcs: list[dict], lease_start: datetime) -> str:
    """Migrate; tenants, an admin token, one node per BMC leased to a tenant. Returns the token."""
    sys.path.insert(0, str(REPO))
    from fleet.models import Node
    from fleet.tenancy_models import Lease
    from kiln.auth import Principal
    from kiln.db import create_db_engine
    from kiln.roles import Role
    from kiln.schema import upgrade
    from kiln.security import SecretBox
    from kiln.tenants import TenantCreate, create_tenant
    from kiln.tokens import issue_token
    from kiln.users import UserCreate, create_user

    engine = create_db_engine(url)
    upgrade(engine)
    box, system = SecretBox(SECRET_KEY), Principal.system("soak")
    with Session(engine) as session:
        tenants = [create_tenant(session, system, TenantCreate(slug=f"t{i}", name=f"Tenant {i}")) for i in range(TENANTS)]
        admin = create_user(session, system, UserCreate(username="soak-admin", role=Role.INFRA_ADMIN, tenants=[]))
        token = issue_token(session, system, admin, days=1).token
        session.commit()
        password = box.encrypt(bmcs[0]["password"])
        session.execute(insert(Node), [
            {"name": f"node-{b['name']}", "provisioner": "fake", "bmc_driver": "ipmi", "hardware_type": "ipmi",
             "bmc_address": f"ipmi://{b['host']}:{b['port']}", "bmc_username": b["username"],
             "bmc_password_encrypted": password if b["password"] == bmcs[0]["password"] else box.encrypt(b["password"]),
             "rack": f"r{i % 20}", "resource_class": "gpu-8x", "facts": {}, "provision_state": "active",
             "maintenance": False} for i, b in enumerate(bmcs)])
        ids = dict(session.execute(select(Node.name, Node.id)).all())
        session.execute(insert(Lease), [{"tenant_id": tenants[i % TENANTS].id, "node_id": ids[f"node-{b['name']}"],
                                         "starts_at": lease_start, "created_by": "soak"} for i, b in enumerate(bmcs)])
        session.commit()
    engine.dispose()
    return token


class Load:
    """A bounded request loop: at most `rps` requests a second over `threads` threads."""

    def __init__(self, base: str, token: str, node_ids: list[int], rps: float, threads: int = 8) -> None:
        self.base, self.headers, self.node_ids = base, {"Authorization": f"Bearer {token}"}, node_ids
        self.interval, self.threads = threads / rps, threads
        self.samples: list[tuple[float, str, int, float]] = []  # (t, path kind, status, seconds)
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def _path(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choice(("node", "health", "rack", "tenants", "readyz"))
        node = rng.choice(self.node_ids)
        return kind, {"node": f"/api/v1/nodes/{node}", "health": f"/api/v1/nodes/{node}/health",
                      "rack": f"/api/v1/nodes?rack=r{rng.randrange(20)}", "tenants": "/api/v1/tenants",
                      "readyz": "/readyz"}[kind]

    def _loop(self, seed_value: int) -> None:
        rng = random.Random(seed_value)
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=10) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                kind, path = self._path(rng)
                started = time.monotonic()
                try:
                    status = client.get(path).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.samples.append((time.time(), kind, status, time.monotonic() - started))
                next_at += self.interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(self.threads)]
        for thread in threads:
            thread.start()
        return threads


POWER_READINGS = text("SELECT entity, observed_at FROM health_snapshot "
                      "WHERE metric = 'ipmi_dcmi_power_consumption_watts' AND labels_key = ''")


def watch_first_reading(url: str, stop: threading.Event, first: dict[str, datetime]) -> None:
    """Record the time of each node's first stored DCMI reading, where its energy integration
    starts (the latest reading is kept in `health_snapshot`; every 2 s, through the restart)."""
    from kiln.db import create_db_engine

    engine = create_db_engine(url)
    while not stop.wait(2.0):
        with contextlib.suppress(Exception):  # the database restart: try again next time
            with engine.connect() as connection:
                for node, at in connection.execute(POWER_READINGS):
                    first.setdefault(node, at if at.tzinfo else at.replace(tzinfo=UTC))
    engine.dispose()


def start_kiln(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    return subprocess.Popen([KILN, *args], env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise SystemExit(f"kiln serve did not become ready at {base}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def check(url: str, bmcs: list[dict], first: dict[str, datetime], interval: int,
          window: tuple[datetime, datetime]) -> dict:
    """Polls, energy and usage against what the run should have produced (see the docstring)."""
    from collectors.models import NodeEnergyHour, Rollup5m
    from fleet.models import Node
    from kiln.db import create_db_engine
    from metering.models import UsageRecord
    from metering.usage import build_usage

    engine = create_db_engine(url)
    watts = {f"node-{b['name']}": b["expected"]["dcmi"]["current_watts"] for b in bmcs}
    with Session(engine) as session:
        ids = dict(session.execute(select(Node.name, Node.id)).all())
        last = dict(session.execute(POWER_READINGS).all())
        polls = dict(session.execute(select(Rollup5m.entity, func.sum(Rollup5m.count)).where(
            Rollup5m.metric == "ipmi_dcmi_power_consumption_watts").group_by(Rollup5m.entity)).all())
        energy = defaultdict(lambda: [Decimal(0), 0])
        for node_id, hour, kwh, seconds in session.execute(select(
                NodeEnergyHour.node_id, NodeEnergyHour.hour, NodeEnergyHour.kwh, NodeEnergyHour.covered_seconds)):
            energy[node_id][0] += kwh
            energy[node_id][1] += seconds
        hours_start = window[0].replace(minute=0, second=0, microsecond=0)
        hours_end = window[1].replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        # as once the hours are over (an open hour counts energy pro rata to the time elapsed)
        build_usage(session, hours_start, hours_end, now=hours_end)
        session.commit()
        rows = session.execute(select(UsageRecord.resource_id, UsageRecord.sku, UsageRecord.hour, UsageRecord.source,
                                      func.count(), func.sum(UsageRecord.quantity))
                               .group_by(UsageRecord.resource_id, UsageRecord.sku, UsageRecord.hour,
                                         UsageRecord.source)).all()
    engine.dispose()
    lost = doubled = 0.0
    offenders: list[tuple[float, str, float, float]] = []  # (excess, node, covered, span)
    kwh_error, expected_polls, completed, worst = 0.0, 0, 0, 0.0
    for name, node_id in ids.items():
        start, end = first.get(name), last.get(name)
        if start is None or end is None:
            lost += (window[1] - window[0]).total_seconds()
            continue
        end = end if end.tzinfo else end.replace(tzinfo=UTC)
        span = (end - start).total_seconds()
        count = int(polls.get(name, 0))
        tolerance = 0.5 * count + 2
        covered = energy[node_id][1]
        lost += max(0.0, span - covered - tolerance)
        doubled += max(0.0, covered - span - tolerance)
        if abs(covered - span) > tolerance:
            offenders.append((abs(covered - span), name, covered, round(span, 1)))
        if covered:
            kwh_error = max(kwh_error, abs(float(energy[node_id][0]) - watts[name] * covered / 3.6e6)
                            / (watts[name] * covered / 3.6e6))
        expected = int((window[1] - start).total_seconds() // interval) + 1
        expected_polls += expected
        completed += count
        worst = max(worst, count / expected)
    by_key = defaultdict(dict)
    for resource, sku, hour, source, n, quantity in rows:
        by_key[(resource, hour)][(sku, source)] = (n, quantity)
    hours_lost = hours_doubled = 0
    for name, node_id in ids.items():
        hour = hours_start
        while hour < hours_end and hour < window[1]:
            entry = by_key.get((name, hour), {})
            lease_rows = [n for (sku, source), (n, _) in entry.items() if source == "lease"]
            hours_lost += not lease_rows
            hours_doubled += sum(n > 1 for n in lease_rows) + sum(
                n > 1 for (sku, source), (n, _) in entry.items() if source == "energy")
            hour += timedelta(hours=1)
        measured = energy[node_id][0]
        in_usage = sum((q for (resource, _h), e in by_key.items() if resource == name
                        for (sku, source), (_, q) in e.items() if source == "energy"), Decimal(0))
        if measured and abs(in_usage - measured) > Decimal("0.000001"):
            hours_lost += in_usage < measured
            hours_doubled += in_usage > measured
    return {
        "polls": {"completed": completed, "expected": expected_polls,
                  "ratio": round(completed / expected_polls, 4) if expected_polls else 0,
                  "max_node_ratio": round(worst, 3)},
        "energy": {"nodes": len(ids), "lost_s": round(lost, 1), "doubled_s": round(doubled, 1),
                   "max_kwh_error": round(kwh_error, 5),
                   "worst": [{"node": n, "covered_s": c, "span_s": sp} for _, n, c, sp in sorted(offenders)[-5:]]},
        "usage": {"hours_lost": hours_lost, "hours_doubled": hours_doubled, "rows": sum(n for *_, n, _q in rows)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--bmcs", type=int, default=1000)
    parser.add_argument("--interval", type=int, default=30, help="IPMI poll interval (KILN_IPMI_INTERVAL)")
    parser.add_argument("--rps", type=float, default=20.0, help="most API requests a second")
    parser.add_argument("--down", type=float, default=30.0, help="seconds the killed worker stays down")
    parser.add_argument("--quick", action="store_true", help="100 BMCs for 2 minutes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.bmcs = 2.0, 100
    duration = args.minutes * 60
    work = Path(tempfile.mkdtemp(prefix="kiln-soak-"))
    pg = PrivatePostgres(work)
    procs: dict[str, subprocess.Popen] = {}
    events: list[dict] = []

    def event(what: str) -> None:
        events.append({"at": datetime.now(UTC).isoformat(timespec="seconds"), "event": what})
        log(what)

    try:
        pg.start()
        event(f"PostgreSQL on 127.0.0.1:{pg.port}")
        with bmc_simulator(work / "bmcsim", args.bmcs) as bmcs:
            event(f"{len(bmcs)} simulated BMCs")
            lease_start = datetime.now(UTC) - timedelta(hours=1)
            token = seed(pg.url, bmcs, lease_start)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("KILN_")},
                   "KILN_DATABASE_URL": pg.url, "KILN_SECRET_KEY": SECRET_KEY, "KILN_DATA_DIR": str(work / "data"),
                   "KILN_IPMI_INTERVAL": str(args.interval), "KILN_SYNC_INTERVAL": "3600", "KILN_LOG_LEVEL": "WARNING"}
            first: dict[str, datetime] = {}  # watched from before the first poll
            stop_watch = threading.Event()
            watcher = threading.Thread(target=watch_first_reading, args=(pg.url, stop_watch, first), daemon=True)
            watcher.start()
            window_start = datetime.now(UTC)
            procs["api"] = start_kiln(["serve", "--host", "127.0.0.1", "--port", str(port)], env, work / "api.log")
            for name in ("w1", "w2"):
                procs[name] = start_kiln(["worker"], {**env, "KILN_WORKER_NAME": name}, work / f"{name}.log")
            wait_ready(base)
            started_at = time.monotonic()
            event("api and 2 workers running")
            node_ids = list(range(1, len(bmcs) + 1))
            load = Load(base, token, node_ids, args.rps)
            threads = load.start()
            schedule = [(0.3 * duration, "kill"), (0.3 * duration + args.down, "restart"), (0.6 * duration, "pg")]
            for at, action in schedule:
                time.sleep(max(0.0, at - (time.monotonic() - started_at)))
                if action == "kill":
                    os.killpg(procs["w2"].pid, signal.SIGKILL)
                    procs["w2"].wait()
                    event("worker w2 killed (SIGKILL)")
                elif action == "restart":
                    procs["w2"] = start_kiln(["worker"], {**env, "KILN_WORKER_NAME": "w2"}, work / "w2.log")
                    event("worker w2 started again")
                else:
                    pg.restart()
                    event("PostgreSQL restarted")
            time.sleep(max(0.0, duration - (time.monotonic() - started_at)))
            load.stop.set()
            for thread in threads:
                thread.join(timeout=15)
            for name in ("w1", "w2"):
                os.killpg(procs[name].pid, signal.SIGTERM)
            for name in ("w1", "w2"):
                procs[name].wait(timeout=60)
            window_end = datetime.now(UTC)
            stop_watch.set()
            watcher.join(timeout=10)
            event("load and workers stopped")
            result = check(pg.url, bmcs, first, args.interval, (window_start, window_end))
        latencies = [s[3] for s in load.samples if s[2] == 200]
        errors = sum(1 for s in load.samples if s[2] != 200)
        api = {"requests": len(load.samples), "errors": errors,
               "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
               "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None}
        ok = (result["energy"]["lost_s"] == 0 and result["energy"]["doubled_s"] == 0
              and result["usage"]["hours_lost"] == 0 and result["usage"]["hours_doubled"] == 0
              and result["polls"]["ratio"] >= 0.9)
        print(json.dumps({"benchmark": "soak", "scale": f"{len(bmcs)} BMCs, 2 workers, {args.minutes:g} min",
                          "kiln_s": round(duration, 1), "baseline": None, "baseline_s": None, "ratio": None,
                          "api": api, **result, "events": events, "ok": ok}))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=20)
        pg.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
