"""Provision N fake-hardware nodes to `active` through Kiln and through a plain openstacksdk loop.

    python -m benchmarks.provision [--nodes 200 | --quick] [--concurrency 20] [--repeat 1]
                                   [--database-url postgresql://USER:PASSWORD@HOST:5432/DB]

Both sides do the same lifecycle at the same concurrency, one phase over all nodes after the
other: enroll (Ironic node `fake-hardware` + its boot port) → manage → provide (automated
cleaning) → deploy (image URL + sha256 checksum) until every node is `active`. Each side gets
its own fresh standalone Ironic 39 (`tests/peers/ironic.sh`, empty database), so both face
the same server state; every node's final state is checked in Ironic afterwards.

- Kiln: a fresh SQLite data dir (or a fresh database on `--database-url`'s PostgreSQL server),
  `kiln migrate` (not timed), then the CLI as a user runs it, each a subprocess:
  `kiln nodes import FILE.csv`, `kiln nodes action manage --all`, `... provide --all`,
  `... deploy --all --image-url U --image-checksum C`. The CSV rows use `ironic_driver` =
  `fake-hardware` with a `redfish://` BMC address under `.invalid`, which keeps Ironic's fake
  power interface (any other address would make Ironic drive a real BMC). Peak RSS: the largest
  `ru_maxrss` (wait4) of those processes.
- Baseline: this file as a subprocess (`--baseline-worker`): one openstacksdk `Connection`
  (`auth_type='none'`, `baremetal_status_code_retries=0`), a ThreadPoolExecutor of the same
  size, the same requests a hand-written script needs (create node + port; PATCH
  instance_info; PUT provision state, retrying 409 NodeLocked like Kiln for ~3 s) and the
  same polling as Kiln's `OperationRunner._wait` (GET every 50 ms, ×1.5, capped at 2 s).

Times are wall-clock seconds of the subprocesses, interpreter start-up and imports included
on both sides. Order: Kiln first (any cold-cache cost lands on Kiln, never in its favour);
with `--repeat` the order alternates K B, B K, ... and medians are reported. One JSON line
goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IRONIC_SH = REPO / "tests" / "peers" / "ironic.sh"
PHASES = ("enroll", "manage", "provide", "deploy")
TARGET_RATIO = 1.05  # issue 19: Kiln within 5 % of openstacksdk doing the same work
IMAGE_URL = "http://images.example/ubuntu-22.04-gpu.qcow2"
IMAGE_CHECKSUM = "sha256:" + "5" * 64
RESOURCE_CLASS = "gpu.h100"
# Ironic's transient provision states (ironic/common/states.py): the node is still busy.
TRANSIENT = frozenset({
    "verifying", "inspecting", "inspect wait", "cleaning", "clean wait", "deploying", "wait call-back",
    "deleting", "rebuild", "adopting", "rescuing", "rescue wait", "unrescuing", "servicing", "service wait",
})
POLL_FIELDS = ["uuid", "provision_state", "target_provision_state", "last_error"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class SideFailed(RuntimeError):
    """One side's run failed (a node did not get to `active`, a process exited non-zero)."""


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[provision] {message}", file=sys.stderr, flush=True)


def node_name(i: int) -> str:
    return f"bench-{i:04d}"


def node_mac(i: int) -> str:
    return f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


# -- peers ------------------------------------------------------------------------------------


def install_ironic() -> str:
    """`ironic.sh install`; the Ironic version installed."""
    out = subprocess.run(["bash", str(IRONIC_SH), "install"], check=True, capture_output=True, text=True)
    venv = Path(out.stdout.strip().splitlines()[-1])
    probe = "import importlib.metadata as m; print(m.version('ironic'))"
    return subprocess.run([str(venv / "bin" / "python"), "-c", probe], check=True, capture_output=True,
                          text=True).stdout.strip()


@contextlib.contextmanager
def running_ironic(state: Path) -> Iterator[tuple[str, int]]:
    """A fresh Ironic (empty database) in `state`; yields its URL and PID."""
    started = subprocess.run(["bash", str(IRONIC_SH), "start", str(state)], capture_output=True, text=True,
                             check=False)
    if started.returncode != 0:
        raise SystemExit(f"ironic.sh start failed: {started.stderr.strip()[-2000:]}")
    try:
        yield started.stdout.strip().splitlines()[-1], int((state / "pid").read_text())
    finally:
        subprocess.run(["bash", str(IRONIC_SH), "stop", str(state)], capture_output=True, check=False)


@contextlib.contextmanager
def fresh_database(url: str | None, template: str | None = None) -> Iterator[str | None]:
    """None for SQLite; else a new database on `url`'s server, empty or a copy of its database
    `template` (dropped afterwards)."""
    if not url:
        yield None
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"kiln_bench_{uuid.uuid4().hex[:12]}"
    # from the `postgres` database: a template must have no other connection while it is copied
    admin = create_engine(base.set(drivername="postgresql+psycopg", database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by process `root` and its live descendants (Ironic's workers)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    tree, grew = {root}, True
    while grew:
        before = len(tree)
        tree |= {pid for pid, (ppid, _) in stats.items() if ppid in tree}
        grew = len(tree) > before
    return sum(stats[pid][1] for pid in tree if pid in stats)


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def ironic_states(url: str) -> dict[str, int]:
    """How many nodes Ironic has in each provision state."""
    import openstack.connection

    conn = openstack.connection.Connection(auth_type="none", baremetal_endpoint_override=url,
                                           baremetal_status_code_retries=0)
    counts: dict[str, int] = {}
    for node in conn.baremetal.nodes(fields=["uuid", "provision_state"]):
        counts[node.provision_state] = counts.get(node.provision_state, 0) + 1
    return counts


def check_all_active(url: str, nodes: int, side: str) -> None:
    counts = ironic_states(url)
    if counts != {"active": nodes}:
        raise SideFailed(f"{side}: expected {nodes} active nodes in Ironic, found {counts}")


# -- subprocesses with their peak RSS ---------------------------------------------------------


def run_measured(argv: list[str], env: dict[str, str], workdir: Path, label: str) -> tuple[float, float, float, str]:
    """Run `argv` to its end; (wall s, CPU s, peak RSS MiB, stdout). Fails loudly on exit != 0."""
    out_path, err_path = workdir / f"{label}.out", workdir / f"{label}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (err_path.read_text(errors="replace").strip() or out_path.read_text(errors="replace").strip())[-3000:]
        raise SideFailed(f"{label} exited {proc.returncode}: {' '.join(argv)}\n{tail}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out_path.read_text()


# -- Kiln ------------------------------------------------------------------------------------


def write_import_file(path: Path, nodes: int) -> None:
    """The CSV an admin would import: fake-hardware nodes with fake power, 8 GPUs each."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "provisioner", "bmc_address", "bmc_username", "bmc_password", "boot_mac",
                         "resource_class", "rack", "tags", "ironic_driver", "gpu_model", "gpu_count",
                         "gpu_memory_mib"])
        for i in range(1, nodes + 1):
            writer.writerow([node_name(i), "ironic", f"redfish://bmc-{i:04d}.bench.invalid/redfish/v1/Systems/1",
                             "admin", f"bmc-password-{i:04d}", node_mac(i), RESOURCE_CLASS, f"r{i // 40:02d}",
                             "bench;h100", "fake-hardware", "NVIDIA H100 80GB HBM3", 8, 81559])


def run_kiln(ironic_url: str, nodes: int, concurrency: int, workdir: Path, database_url: str | None) -> dict:
    """Kiln's CLI through the whole lifecycle; per-phase seconds and peak RSS."""
    workdir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update({
        "KILN_DATA_DIR": str(workdir / "data"),
        "KILN_SECRET_KEY": secrets.token_urlsafe(48),
        "KILN_IRONIC_URL": ironic_url,
        "KILN_BULK_CONCURRENCY": str(concurrency),
        "KILN_LOG_LEVEL": "WARNING",
    })
    if database_url:
        env["KILN_DATABASE_URL"] = database_url
    kiln = [sys.executable, "-m", "kiln.cli.main"]
    csv_path = workdir / "nodes.csv"
    write_import_file(csv_path, nodes)
    run_measured(kiln + ["migrate"], env, workdir, "migrate")  # not timed: a one-off set-up step

    steps = {
        "enroll": ["nodes", "import", str(csv_path)],
        "manage": ["nodes", "action", "manage", "--all"],
        "provide": ["nodes", "action", "provide", "--all"],
        "deploy": ["nodes", "action", "deploy", "--all", "--image-url", IMAGE_URL, "--image-checksum", IMAGE_CHECKSUM],
    }
    phases, cpu, rss = {}, {}, {}
    for phase, argv in steps.items():
        seconds, cpu_s, peak, out = run_measured(
            kiln + argv + ["--concurrency", str(concurrency), "--output", "json"], env, workdir, f"kiln-{phase}"
        )
        rows = json.loads(out)
        good = sum(1 for r in rows if r.get("status") == "created" or r.get("ok"))
        if good != nodes:
            raise SideFailed(f"kiln {phase}: {good}/{nodes} nodes succeeded; see {workdir}/kiln-{phase}.out")
        phases[phase], cpu[phase], rss[phase] = round(seconds, 2), round(cpu_s, 2), round(peak, 1)
        log(f"  kiln {phase}: {seconds:.1f} s, CPU {cpu_s:.1f} s, peak RSS {peak:.0f} MiB")
    return {"seconds": round(sum(phases.values()), 2), "phases": phases, "cpu_s": round(sum(cpu.values()), 2),
            "rss_mb": rss, "peak_rss_mb": max(rss.values())}


# -- baseline --------------------------------------------------------------------------------


def run_baseline(ironic_url: str, nodes: int, concurrency: int, workdir: Path, timeout: float) -> dict:
    """The plain openstacksdk loop, in its own process like Kiln's CLI."""
    workdir.mkdir(parents=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "--baseline-worker", ironic_url,
            "--nodes", str(nodes), "--concurrency", str(concurrency), "--timeout", str(timeout)]
    seconds, cpu_s, peak, out = run_measured(argv, dict(os.environ), workdir, "baseline")
    report = json.loads(out.strip().splitlines()[-1])
    phases = {p: round(report["phases"][p], 2) for p in PHASES}
    for phase in PHASES:
        log(f"  baseline {phase}: {phases[phase]:.1f} s")
    log(f"  baseline CPU {cpu_s:.1f} s, peak RSS {peak:.0f} MiB")
    return {"seconds": round(seconds, 2), "phases": phases, "startup_s": round(seconds - sum(phases.values()), 2),
            "cpu_s": round(cpu_s, 2), "peak_rss_mb": round(peak, 1), "locked_retries": report["locked_retries"]}


def baseline_worker(url: str, nodes: int, concurrency: int, timeout: float) -> None:
    """What an operator's own script does: openstacksdk, a thread pool, its own polling loop."""
    import openstack.connection
    import openstack.exceptions

    conn = openstack.connection.Connection(auth_type="none", baremetal_endpoint_override=url,
                                           baremetal_status_code_retries=0)
    bm = conn.baremetal
    retries = [0]

    def retry_locked(call: Callable[[], object]) -> object:
        deadline, delay = time.monotonic() + 3.0, 0.1
        while True:
            try:
                return call()
            except openstack.exceptions.ConflictException:
                if time.monotonic() + delay > deadline:
                    raise
                retries[0] += 1
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def wait(node_id: str) -> object:
        deadline, interval = time.monotonic() + timeout, 0.05
        while True:
            node = bm.get_node(node_id, fields=POLL_FIELDS)
            if not node.target_provision_state and node.provision_state not in TRANSIENT:
                return node
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node_id} still {node.provision_state} after {timeout} s")
            time.sleep(interval)
            interval = min(interval * 1.5, 2.0)

    def enroll(i: int) -> str:
        node = bm.create_node(name=node_name(i), driver="fake-hardware", driver_info={}, properties={},
                              resource_class=RESOURCE_CLASS)
        bm.create_port(node_uuid=node.id, address=node_mac(i))
        return node.id

    def transition(node_id: str, verb: str, expected: str, patch: list | None = None) -> None:
        if patch:
            retry_locked(lambda: bm.patch_node(node_id, patch))
        retry_locked(lambda: bm.set_node_provision_state(node_id, verb, wait=False))
        node = wait(node_id)
        if node.provision_state != expected:
            raise RuntimeError(f"{node_id}: {verb} ended in {node.provision_state}: {node.last_error}")

    algo, _, value = IMAGE_CHECKSUM.partition(":")
    image_patch = [{"op": "add", "path": "/instance_info/image_source", "value": IMAGE_URL},
                   {"op": "add", "path": "/instance_info/image_os_hash_algo", "value": algo},
                   {"op": "add", "path": "/instance_info/image_os_hash_value", "value": value}]
    phases: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        started = time.monotonic()
        ids = list(pool.map(enroll, range(1, nodes + 1)))
        phases["enroll"] = time.monotonic() - started
        for phase, verb, expected, patch in (("manage", "manage", "manageable", None),
                                             ("provide", "provide", "available", None),
                                             ("deploy", "active", "active", image_patch)):
            started = time.monotonic()
            list(pool.map(functools.partial(transition, verb=verb, expected=expected, patch=patch), ids))
            phases[phase] = time.monotonic() - started
    print(json.dumps({"phases": phases, "locked_retries": retries[0]}))


# -- driver ----------------------------------------------------------------------------------


def run_side(side: str, rep: int, attempt: int, nodes: int, args: argparse.Namespace, tmp: Path) -> dict:
    """One side's run on its own fresh Ironic, with the CPU that Ironic and others used meanwhile."""
    name = f"{side}-{rep}" + (f"-retry{attempt - 1}" if attempt > 1 else "")
    with running_ironic(tmp / f"ironic-{name}") as (url, pid):
        log(f"run {rep + 1}/{args.repeat} {side}: {nodes} nodes, concurrency {args.concurrency}, {url}")
        ironic_cpu, machine_cpu = tree_cpu_seconds(pid), machine_cpu_seconds()
        if side == "kiln":
            with fresh_database(args.database_url) as db:
                result = run_kiln(url, nodes, args.concurrency, tmp / name, db)
        else:
            result = run_baseline(url, nodes, args.concurrency, tmp / name, args.timeout)
        ironic_cpu, machine_cpu = tree_cpu_seconds(pid) - ironic_cpu, machine_cpu_seconds() - machine_cpu
        check_all_active(url, nodes, side)
    # Ironic's CPU close to the wall time: Ironic was the bottleneck. "other" is CPU used by
    # anything else on the machine meanwhile (noise: rerun when it is large).
    result["ironic_cpu_s"] = round(ironic_cpu, 1)
    result["other_cpu_s"] = round(machine_cpu - ironic_cpu - result["cpu_s"], 1)
    log(f"  {side}: {result['seconds']:.1f} s; CPU: client {result['cpu_s']:.1f} s, "
        f"Ironic {ironic_cpu:.1f} s, other processes {result['other_cpu_s']:.1f} s")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200, help="Nodes to provision (default 200).")
    parser.add_argument("--quick", action="store_true",
                        help="10 nodes, about a minute: a smoke test (CLI start-up dominates its ratio).")
    parser.add_argument("--concurrency", type=int, default=20, help="Nodes worked on at once, both sides.")
    parser.add_argument("--repeat", type=int, default=1, help="Runs per side (order alternates); medians reported.")
    parser.add_argument("--database-url", help="PostgreSQL server for Kiln (a fresh database per run); "
                                               "default: SQLite in a temporary data dir.")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds a node may take per step.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory (logs, databases).")
    parser.add_argument("--baseline-worker", metavar="IRONIC_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    nodes = 10 if args.quick else args.nodes
    if args.baseline_worker:
        baseline_worker(args.baseline_worker, nodes, args.concurrency, args.timeout)
        return

    log("installing Ironic (idempotent)")
    version = install_ironic()
    tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-provision-"))
    runs: list[dict] = []
    flakes: list[str] = []
    try:
        for rep in range(args.repeat):
            order = ("kiln", "baseline") if rep % 2 == 0 else ("baseline", "kiln")
            run: dict = {"order": "/".join(order)}
            for side in order:
                for attempt in (1, 2):  # Ironic's API server sometimes resets a connection at load
                    try:
                        run[side] = run_side(side, rep, attempt, nodes, args, tmp)
                        break
                    except SideFailed as exc:
                        if attempt == 2:
                            raise SystemExit(str(exc)) from None
                        lines = str(exc).strip().splitlines()
                        flakes.append(f"{side} run {rep + 1}: {lines[-1][:300] if lines else exc}")
                        log(f"  {side} failed, running it again on a fresh Ironic: {str(exc)[-2000:]}")
            runs.append(run)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)

    def median(side: str, key: str, phase: str | None = None) -> float:
        values = [r[side][key][phase] if phase else r[side][key] for r in runs]
        return round(statistics.median(values), 2)

    kiln_s, baseline_s = median("kiln", "seconds"), median("baseline", "seconds")
    result = {
        "benchmark": "provision",
        "scale": nodes,
        "kiln_s": kiln_s,
        "baseline": f"openstacksdk thread pool, concurrency {args.concurrency}",
        "baseline_s": baseline_s,
        "ratio": round(kiln_s / baseline_s, 3),
        "target_ratio": TARGET_RATIO,
        "peak_rss_mb": max(r["kiln"]["peak_rss_mb"] for r in runs),
        "baseline_peak_rss_mb": max(r["baseline"]["peak_rss_mb"] for r in runs),
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "database": "postgresql" if args.database_url else "sqlite",
        "ironic_version": version,
        "kiln_phases_s": {p: median("kiln", "phases", p) for p in PHASES},
        "baseline_phases_s": {p: median("baseline", "phases", p) for p in PHASES},
        "baseline_startup_s": median("baseline", "startup_s"),
        "kiln_cpu_s": median("kiln", "cpu_s"),
        "baseline_cpu_s": median("baseline", "cpu_s"),
        "baseline_locked_retries": sum(r["baseline"]["locked_retries"] for r in runs),
        "ironic_cpu_s": {"kiln": median("kiln", "ironic_cpu_s"), "baseline": median("baseline", "ironic_cpu_s")},
        "other_cpu_s": {"kiln": median("kiln", "other_cpu_s"), "baseline": median("baseline", "other_cpu_s")},
        "flakes": flakes,
        "runs": [{"order": r["order"], "kiln_s": r["kiln"]["seconds"], "baseline_s": r["baseline"]["seconds"]}
                 for r in runs],
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
