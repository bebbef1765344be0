"""A fleet of emulated Redfish BMCs on loopback for benchmarks/redfish_poll.py — a stand-in.

    with running_fleet(mockup_dir, 1000, processes=2, latency_ms=50, username=U, password=P) as fleet:
        port, addresses, pids = fleet

sushy-tools' `sushy-static` (tests/peers/redfish.sh) is one Flask process per BMC; 1,000 of them
do not fit a 2-core machine. This server is a stand-in for them: each BMC is its own loopback
address (127.77.0.1, 127.77.0.2, …, 127.77.3.232 for 1,000: the kernel answers the whole
127/8 on `lo`), all on one port, served by `processes` asyncio processes (BMC i by process
i mod P). Every BMC serves the same DMTF mockup directory **verbatim**, as `sushy-static`
does (GET of `/redfish/v1/<path>` answers `<mockup>/<path>/index.json` byte for byte; no file:
404 with a Redfish error body), and adds what a real BMC has and `sushy-static` lacks, after
DSP0266: the service root is readable without credentials; every other GET needs a session
token or HTTP basic auth (else 401); POST `/redfish/v1/SessionService/Sessions` with the right
`UserName`/`Password` creates a session (201, `X-Auth-Token`, `Location`) whose token is
valid on that BMC only; DELETE of it ends it. HTTP/1.1 keep-alive, one request at a time per
connection (what httpx and requests send).

`latency_ms` holds every answer back that long (asyncio sleep, no CPU): real BMCs take tens
to hundreds of milliseconds per GET (their web servers run on small ARM SoCs and read sensors
on demand); 50 ms is the fast end of that, chosen so that the clients' own overhead is not
hidden behind BMC time.

Each server process (`python -m benchmarks.redfish_fleet --serve K ...`, the password in the
environment, never on the command line) prints `ready` once it listens. `GET /_fleet/stats`
on any address answers that process's counters (requests by method and status, logins,
sessions deleted; the stats requests themselves are not counted) — not a Redfish path;
`fleet_stats` adds the processes' figures up, to compare the two sides' work.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

PREFIX = "/redfish/v1"
SESSIONS = "/redfish/v1/SessionService/Sessions"
NOT_FOUND = json.dumps({"error": {"code": "Base.1.0.GeneralError",
                                  "message": "The resource was not found"}}).encode()
UNAUTHORIZED = json.dumps({"error": {"code": "Base.1.0.GeneralError",
                                     "message": "No valid session or credentials"}}).encode()
BAD_LOGIN = json.dumps({"error": {"code": "Base.1.0.MalformedJSON",
                                  "message": "The login is not JSON"}}).encode()
REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 405: "Method Not Allowed"}


def bmc_address(index: int) -> str:
    """The loopback address of BMC `index` (0-based): 127.77.0.1 upwards, 250 per /24."""
    return f"127.77.{index // 250}.{index % 250 + 1}"


def load_mockup(root: Path) -> dict[str, bytes]:
    """Every `index.json` of a mockup directory, keyed by its Redfish path (no trailing slash)."""
    files = {}
    for file in root.rglob("index.json"):
        rel = file.parent.relative_to(root).as_posix()
        files[PREFIX if rel == "." else f"{PREFIX}/{rel}"] = file.read_bytes()
    if PREFIX not in files:
        raise SystemExit(f"redfish_fleet: no Redfish mockup (index.json) in {root}")
    return files


class Bmc:
    """One emulated BMC's credentials and sessions (token -> session path)."""

    def __init__(self, username: str, password: str) -> None:
        self.basic = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.login = {"UserName": username, "Password": password}
        self.sessions: dict[str, str] = {}
        self.numbers = itertools.count(1)


class FleetServer:
    """The BMCs one process serves: answers requests as the module docstring says."""

    def __init__(self, files: dict[str, bytes], latency_s: float) -> None:
        self.files, self.latency_s = files, latency_s
        self.stats: Counter[str] = Counter()

    async def handle(self, bmc: Bmc, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one keep-alive connection until the client closes it."""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                status, extra, payload = self.answer(bmc, method, target.split("?", 1)[0], headers, body)
                if not target.startswith("/_fleet"):
                    self.stats[f"{method} {status}"] += 1
                    if self.latency_s:
                        await asyncio.sleep(self.latency_s)
                out = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
                       f"Content-Length: {len(payload)}", "OData-Version: 4.0"]
                if payload:
                    out.append("Content-Type: application/json; charset=utf-8")
                out += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def answer(self, bmc: Bmc, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        """(status, extra headers, body) for one request."""
        path = path.rstrip("/") or "/"
        if path == "/_fleet/stats":
            return 200, {}, json.dumps(self.stats).encode()
        token = headers.get("x-auth-token")
        authorised = (token in bmc.sessions) or headers.get("authorization") == bmc.basic
        if method == "POST" and path == SESSIONS:
            try:
                login = json.loads(body)
            except ValueError:
                return 400, {}, BAD_LOGIN
            if login != bmc.login:
                return 401, {}, UNAUTHORIZED
            self.stats["logins"] += 1
            token, where = secrets.token_hex(16), f"{SESSIONS}/{next(bmc.numbers)}"
            bmc.sessions[token] = where
            return 201, {"X-Auth-Token": token, "Location": where}, json.dumps(
                {"@odata.id": where, "Id": where.rsplit("/", 1)[1], "UserName": login["UserName"]}).encode()
        if method == "DELETE" and path.startswith(SESSIONS + "/"):
            if not authorised:
                return 401, {}, UNAUTHORIZED
            for key, where in list(bmc.sessions.items()):
                if where == path:
                    del bmc.sessions[key]
                    self.stats["sessions_deleted"] += 1
                    return 204, {}, b""
            return 404, {}, NOT_FOUND
        if method != "GET":
            return 405, {}, NOT_FOUND
        if path != PREFIX and not authorised:
            return 401, {}, UNAUTHORIZED
        payload = self.files.get(path)
        return (200, {}, payload) if payload is not None else (404, {}, NOT_FOUND)


async def serve(indexes: list[int], port: int, files: dict[str, bytes], latency_s: float,
                username: str, password: str) -> None:
    """Listen on every BMC address of `indexes`; print `ready`; run until SIGTERM."""
    fleet = FleetServer(files, latency_s)
    servers = []
    for i in indexes:
        bmc = Bmc(username, password)
        servers.append(await asyncio.start_server(
            lambda r, w, bmc=bmc: fleet.handle(bmc, r, w), bmc_address(i), port, backlog=256))
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def free_port() -> int:
    """A TCP port free on the first BMC address."""
    with socket.socket() as s:
        s.bind((bmc_address(0), 0))
        return s.getsockname()[1]


def fleet_stats(port: int, processes: int) -> Counter[str]:
    """Every server process's counters added up (see the module docstring)."""
    total: Counter[str] = Counter()
    for k in range(processes):
        with urllib.request.urlopen(f"http://{bmc_address(k)}:{port}/_fleet/stats", timeout=30) as rsp:
            total.update(json.loads(rsp.read()))
    return total


@contextlib.contextmanager
def running_fleet(mockup: Path, bmcs: int, *, processes: int = 2, latency_ms: float = 50.0, username: str = "admin",
                  password: str = "") -> Iterator[tuple[int, list[str], list[int]]]:
    """Start the fleet's server processes; yield (port, BMC addresses, pids); stop them after."""
    if not 1 <= bmcs <= 250 * 256:
        raise ValueError("a fleet has 1..64000 BMCs")
    port, processes = free_port(), max(1, min(processes, bmcs))
    env = dict(os.environ, REDFISH_FLEET_PASSWORD=password)
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.redfish_fleet", "--mockup", str(mockup),
                               "--bmcs", str(bmcs), "--processes", str(processes), "--latency-ms", str(latency_ms),
                               "--username", username, "--port", str(port), "--serve", str(k)],
                              stdout=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
             for k in range(processes)]
    try:
        for proc in procs:
            if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                raise RuntimeError("redfish_fleet: a server process did not start")
        yield port, [bmc_address(i) for i in range(bmcs)], [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> None:
    """One server process of a fleet (started by `running_fleet`)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.redfish_fleet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mockup", required=True, type=Path)
    ap.add_argument("--bmcs", type=int, required=True)
    ap.add_argument("--processes", type=int, required=True)
    ap.add_argument("--serve", type=int, required=True, help="this process's number (0-based)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--username", default="admin")
    args = ap.parse_args(argv)
    indexes = list(range(args.serve, args.bmcs, args.processes))
    asyncio.run(serve(indexes, args.port, load_mockup(args.mockup), args.latency_ms / 1000, args.username,
                      os.environ.get("REDFISH_FLEET_PASSWORD", "")))


if __name__ == "__main__":
    main()
