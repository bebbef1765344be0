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

`ok` is true when no energy second or usage hour was lost or doubled and the polls missed are
at most two per node on average (`polls.min_ratio`): the killed worker's nodes go unpolled for
up to two cycles (until it is back or its leases lapse), and every node may miss the cycle that
meets the PostgreSQL restart — 0.905 of the expected polls for 10 minutes at a 30 s interval.
One JSON line on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert, select
from sqlmodel import Session

from benchmarks.soak_measure import Load, api_summary, check, watch_first_reading

REPO = Path(__file__).resolve().parent.parent
KILN = str(Path(sys.executable).parent / "kiln")
SECRET_KEY = "soak-secret-key-" + "k" * 40
TENANTS = 10
# Polls a node may miss on average (see `ok` above): the kill window and the PostgreSQL restart.
MISSED_POLLS_PER_NODE = 2


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
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
        """Stop the cluster (its files go with the work directory)."""
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


def start_kiln(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start `kiln ARGS` in its own process group, its output appended to `log_path`."""
    return subprocess.Popen([KILN, *args], env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(base: str, timeout: float = 60) -> None:
    """Wait until the API at `base` answers /readyz with 200; exit when it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise SystemExit(f"kiln serve did not become ready at {base}")


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
        api = api_summary(load.samples)
        result["polls"]["min_ratio"] = round(1 - MISSED_POLLS_PER_NODE / (duration / args.interval + 1), 4)
        ok = (result["energy"]["lost_s"] == 0 and result["energy"]["doubled_s"] == 0
              and result["usage"]["hours_lost"] == 0 and result["usage"]["hours_doubled"] == 0
              and result["polls"]["ratio"] >= result["polls"]["min_ratio"])
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
