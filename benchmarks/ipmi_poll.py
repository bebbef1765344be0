"""Poll N simulated BMCs with Kiln's IpmiCollector (cold and steady) and with Prometheus'
ipmi_exporter, at the same concurrency, in alternating order.

    python -m benchmarks.ipmi_poll [--bmcs 1000 | --quick] [--concurrency 16] [--repeat 3]
                                   [--steady 5] [--profile FILE.txt] [--keep]
    python -m benchmarks.ipmi_poll --fleet 10000 --worker-procs 2 --kill-one   (benchmarks/ipmi_fleet.py)

Both sides read the same BMCs (tests/peers/bmcsim.sh, IPMI 2.0 over UDP on 127.0.0.1, one
process per 250 BMCs) in the same run, `--concurrency` BMCs at a time each, and every value
either returns is checked against the simulator's bmcs.json (benchmarks/ipmi_check.py): chassis
power state, DCMI watts, each of the 10 sensors' record id, value and state; Kiln's device id
and FRU labels too.

- Kiln: this file as a subprocess (`--kiln-worker`): one `IpmiCollector(targets,
  workers=concurrency, timeout=2.0, retries=1)` (cipher suite default: 17, then 3), `collect()`
  once cold (first contact: session set-up, SDR) and then `--steady` more times on open
  sessions and cached SDRs. The first of those also reads each BMC's device id and FRU (once
  per BMC and day, not every cycle: `kiln_facts_poll_s`); the rest are how the collector runs
  from then on. `kiln_cold_s` is the cold poll, `kiln_s` the median of the polls after the
  facts poll. Peak RSS, CPU and packets are the subprocess's own.
- Baseline: Debian's `prometheus-ipmi-exporter` 1.6.1 with `freeipmi-tools` (installed with
  apt-get when missing; the packaged service is stopped and disabled so nothing listens on all
  interfaces), our own instance on 127.0.0.1 with a module `driver: LAN_2_0`, `privilege:
  admin`, `workaround_flags: [opensesspriv]`, `timeout: 10000` (its sample config's; with 2000
  FreeIPMI gives up on some BMCs under load and gets slower) and the collectors ipmi, chassis,
  dcmi: what Kiln reads every cycle (no `bmc`: Kiln reads the device id once per BMC, not every
  cycle). `/ipmi?target=127.0.0.1:PORT&module=kiln` for every BMC, `--concurrency` scrapes at a
  time. Every scrape runs one FreeIPMI process (and RMCP+ session) per collector and re-reads
  the SDR: that is how ipmi_exporter works, so it has no "steady" mode. Its CPU is the
  exporter's plus its FreeIPMI children's.

`--repeat R` runs both sides R times, alternating which goes first; the JSON line has medians.
The simulator shares the cores with the client under test; `sim_cpu_s` says how much it took,
`other_cpu_s` what other processes took meanwhile. One JSON line goes to stdout, progress to
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.ipmi_check import exporter_values, reading_errors

REPO = Path(__file__).resolve().parent.parent
BMCSIM_SH = REPO / "tests" / "peers" / "bmcsim.sh"
EXPORTER = "prometheus-ipmi-exporter"
BASELINE = "ipmi_exporter 1.6.1 (FreeIPMI; collectors ipmi, chassis, dcmi), {n} concurrent scrapes"
TARGETS = {"speedup_cold": 5.0, "speedup_steady": 10.0}  # issue 19: >= 5x cold, >= 10x steady
EXPORTER_CONFIG = """modules:
  kiln:
    user: {user}
    pass: {password}
    driver: LAN_2_0
    privilege: admin
    timeout: {timeout_ms}
    workaround_flags: [opensesspriv]
    collectors: [ipmi, chassis, dcmi]
"""


def log(message: str) -> None:
    print(f"[ipmi_poll {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def proc_cpu_s(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (and, with `children`, of its reaped children) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----- Kiln side (a subprocess) -----------------------------------------------------------


def kiln_worker(args: argparse.Namespace) -> None:
    """Poll every BMC of bmcs.json with IpmiCollector; print the measurements as JSON."""
    sys.path.insert(0, str(REPO))
    from benchmarks.ipmi_check import facts_errors, kiln_values, reading_errors
    from collectors.ipmi import IpmiCollector, IpmiTarget

    bmcs = json.loads((Path(args.state) / "bmcs.json").read_text())["bmcs"]
    targets = [IpmiTarget(b["name"], b["host"], b["port"], b["username"], b["password"]) for b in bmcs]
    expected = {b["name"]: b["expected"] for b in bmcs}
    polls, facts_right = [], set()
    with IpmiCollector(targets, workers=args.concurrency, timeout=args.timeout, retries=1) as collector:
        for i in range(1 + args.steady):
            packets0, cpu0, t0 = collector.packets_sent(), time.process_time(), time.monotonic()
            results = collector.collect()
            wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
            packets = collector.packets_sent() - packets0
            failed = [r for r in results if not r.ok]
            wrong = [f"{r.target}: {e}" for r in results if r.ok
                     for e in reading_errors(expected[r.target], kiln_values(r.samples))]
            for r in results:
                facts = facts_errors(expected[r.target], r.samples) if r.ok else None
                wrong += [f"{r.target}: {e}" for e in facts or ()]
                if facts == []:
                    facts_right.add(r.target)
            polls.append({"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "packets": packets,
                          "errors": len(failed), "wrong": len(wrong),
                          "first_errors": sorted({r.error for r in failed})[:3], "first_wrong": wrong[:3]})
            log(f"kiln poll {i} ({'cold' if i == 0 else 'steady'}): {wall:.2f} s wall, {cpu:.2f} s CPU, "
                f"{packets / len(targets):.1f} packets/BMC, {len(failed)} failed, {len(wrong)} wrong")
        suites = sorted({collector.cipher_suite_of(t.node) or 0 for t in targets})
    print(json.dumps({"polls": polls, "cipher_suites": suites, "facts_right": len(facts_right),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def run_kiln(args: argparse.Namespace, state: Path, sim_pids: list[int]) -> dict:
    """One Kiln subprocess: its polls, with the simulator's and other processes' CPU meanwhile."""
    sim0, busy0 = sum(proc_cpu_s(p) for p in sim_pids), machine_busy_s()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "benchmarks.ipmi_poll", "--kiln-worker", "--state", str(state),
           "--concurrency", str(args.concurrency), "--timeout", str(args.timeout), "--steady", str(args.steady)]
    if args.profile:  # py-spy samples every thread; collapsed stacks, see README
        cmd = ["py-spy", "record", "--rate", "250", "--format", "raw", "-o", args.profile, "--", *cmd]
    out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, timeout=540, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
    result["sim_cpu_s"] = round(sum(proc_cpu_s(p) for p in sim_pids) - sim0, 2)
    result["other_cpu_s"] = round(machine_busy_s() - busy0 - worker_cpu - result["sim_cpu_s"], 2)
    return result


# ----- baseline: ipmi_exporter ------------------------------------------------------------


def ensure_exporter(args: argparse.Namespace) -> None:
    """Install prometheus-ipmi-exporter + freeipmi-tools if missing (unless --exporter names a
    binary); never leave the packaged service listening on all interfaces."""
    if args.exporter is None:
        if shutil.which(EXPORTER) is None or shutil.which("ipmimonitoring", path=args.freeipmi_path) is None:
            if os.geteuid() != 0:
                sys.exit(f"ipmi_poll: {EXPORTER} and freeipmi-tools are missing (apt-get install them as root)")
            log("installing prometheus-ipmi-exporter and freeipmi-tools with apt-get")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            install = ["apt-get", "install", "-y", "--no-install-recommends", EXPORTER, "freeipmi-tools"]
            if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
                subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
                subprocess.run(install, env=env, check=True, capture_output=True)
        args.exporter = shutil.which(EXPORTER)
    # the package enables (and, where services may start, starts) a unit on :9290, all interfaces
    if Path(f"/lib/systemd/system/{EXPORTER}.service").exists():
        for cmd in (["systemctl", "disable", "--now", EXPORTER], ["service", EXPORTER, "stop"]):
            if shutil.which(cmd[0]):
                subprocess.run(cmd, capture_output=True, check=False)


@contextlib.contextmanager
def running_exporter(args: argparse.Namespace, tmp: Path, user: str, password: str) -> Iterator[tuple[str, int]]:
    config = tmp / "ipmi_exporter.yml"
    config.write_text(EXPORTER_CONFIG.format(user=user, password=password,
                                             timeout_ms=int(args.exporter_timeout * 1000)))
    port = free_port()
    with open(tmp / "ipmi_exporter.log", "wb") as logfile:
        proc = subprocess.Popen([args.exporter, f"--config.file={config}", f"--freeipmi.path={args.freeipmi_path}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=logfile, stderr=subprocess.STDOUT, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(url + "/metrics", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ipmi_exporter did not start; see {tmp / 'ipmi_exporter.log'}") from None
                time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scrape(url: str, bmc: dict, timeout: float) -> tuple[bool, list[str], str]:
    """(answered with every ipmi_up 1, what differs from the simulator's values, error)."""
    query = f"{url}/ipmi?target={bmc['host']}:{bmc['port']}&module=kiln"
    try:
        with urllib.request.urlopen(query, timeout=timeout) as rsp:
            text = rsp.read().decode()
    except (OSError, urllib.error.URLError) as exc:
        return False, [], str(exc)
    ups = re.findall(r'^ipmi_up\{collector="(\w+)"\} (\S+)$', text, re.MULTILINE)
    if not ups or any(v != "1" for _, v in ups):
        return False, [], "ipmi_up 0: " + ",".join(c for c, v in ups if v != "1")
    return True, reading_errors(bmc["expected"], exporter_values(text)), ""


def run_baseline(url: str, pid: int, args: argparse.Namespace, bmcs: list[dict], sim_pids: list[int]) -> dict:
    """One pass of the running exporter over every BMC, `concurrency` scrapes at a time."""
    sim0, cpu0 = sum(proc_cpu_s(p) for p in sim_pids), proc_cpu_s(pid, children=True)
    busy0, own0 = machine_busy_s(), time.process_time()
    t0 = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(lambda b: scrape(url, b, 120), bmcs))
    wall = time.monotonic() - t0
    cpu = proc_cpu_s(pid, children=True) - cpu0
    sim_cpu = sum(proc_cpu_s(p) for p in sim_pids) - sim0
    other = machine_busy_s() - busy0 - cpu - sim_cpu - (time.process_time() - own0)
    errors = [e for ok, _, e in results if not ok]
    wrong = [f"{b['name']}: {w}" for b, (ok, bad, _) in zip(bmcs, results) if ok for w in bad]
    log(f"ipmi_exporter: {wall:.2f} s wall, {cpu:.2f} s CPU (exporter + FreeIPMI), {len(errors)} failed, "
        f"{len(wrong)} wrong")
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "errors": len(errors), "wrong": len(wrong),
            "first_errors": sorted(set(errors))[:3], "first_wrong": wrong[:3], "sim_cpu_s": round(sim_cpu, 2),
            "other_cpu_s": round(other, 2)}


# ----- main ------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    """The median, rounded to the millisecond."""
    return round(statistics.median(values), 3)


def summary(n: int, args: argparse.Namespace, kilns: list[dict], bases: list[dict], load: dict) -> dict:
    """The JSON line: medians over the repeats of each side's figures."""
    cold = [k["polls"][0] for k in kilns]
    facts = [k["polls"][1] for k in kilns if len(k["polls"]) > 1]  # the device id and FRU besides
    steady = [k["polls"][2:] or k["polls"][-1:] for k in kilns]
    kiln_s = median([statistics.median(p["wall_s"] for p in polls) for polls in steady])
    kiln_cold_s, baseline_s = median([p["wall_s"] for p in cold]), median([b["wall_s"] for b in bases])
    speedups = {"speedup_cold": round(baseline_s / kiln_cold_s, 2), "speedup_steady": round(baseline_s / kiln_s, 2)}
    all_polls = [p for k in kilns for p in k["polls"]]
    return {
        "benchmark": "ipmi_poll",
        "scale": n,
        "kiln_s": kiln_s,
        "kiln_cold_s": kiln_cold_s,
        "baseline": BASELINE.format(n=args.concurrency),
        "baseline_s": baseline_s,
        "ratio": round(kiln_s / baseline_s, 4),
        "cold_ratio": round(kiln_cold_s / baseline_s, 4),
        "peak_rss_mb": max(k["peak_rss_mb"] for k in kilns),
        **speedups,
        "targets": TARGETS,
        "target_met": all(speedups[k] >= v for k, v in TARGETS.items()),
        "kiln_facts_poll_s": median([p["wall_s"] for p in facts]) if facts else None,
        "kiln_cold_runs_s": [p["wall_s"] for p in cold],
        "kiln_steady_runs_s": [[p["wall_s"] for p in polls] for polls in steady],
        "baseline_runs_s": [b["wall_s"] for b in bases],
        "first_side": ["kiln" if r % 2 == 0 else "baseline" for r in range(args.repeat)],
        "kiln_cpu_ms_per_bmc": {"cold": round(1000 * median([p["cpu_s"] for p in cold]) / n, 2),
                                "steady": round(1000 * median([p["cpu_s"] for ps in steady for p in ps]) / n, 2)},
        "baseline_cpu_ms_per_bmc": round(1000 * median([b["cpu_s"] for b in bases]) / n, 2),
        # CPU is steadier than wall time on a shared machine: the exporter's over Kiln's
        "cpu_speedup": {"cold": round(median([b["cpu_s"] for b in bases]) / median([p["cpu_s"] for p in cold]), 2),
                        "steady": round(median([b["cpu_s"] for b in bases])
                                        / median([p["cpu_s"] for ps in steady for p in ps]), 2)},
        "kiln_packets_per_bmc": {"cold": round(median([p["packets"] for p in cold]) / n, 2),
                                 "facts": round(median([p["packets"] for p in facts]) / n, 2) if facts else None,
                                 "steady": round(median([p["packets"] for ps in steady for p in ps]) / n, 2)},
        "kiln_errors": max(p["errors"] for p in all_polls),
        "kiln_wrong_values": max(p["wrong"] for p in all_polls),
        "kiln_facts_checked": min(k["facts_right"] for k in kilns),
        "baseline_errors": max(b["errors"] for b in bases),
        "baseline_wrong_values": max(b["wrong"] for b in bases),
        "error_samples": {"kiln": sorted({e for p in all_polls for e in p["first_errors"] + p["first_wrong"]})[:3],
                          "baseline": sorted({e for b in bases for e in b["first_errors"] + b["first_wrong"]})[:3]},
        "kiln_cipher_suites": sorted({s for k in kilns for s in k["cipher_suites"]}),
        "sim_cpu_s": {"kiln_all_polls": median([k["sim_cpu_s"] for k in kilns]),
                      "baseline": median([b["sim_cpu_s"] for b in bases])},
        # CPU other processes on the machine used meanwhile: large means a disturbed run
        "other_cpu_s": {"kiln_all_polls": median([k["other_cpu_s"] for k in kilns]),
                        "baseline": median([b["other_cpu_s"] for b in bases])},
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "load_avg": load,
        "cores": len(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ipmi_poll", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bmcs", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="100 BMCs")
    ap.add_argument("--concurrency", type=int,
                    help="BMCs polled at a time: Kiln's workers and concurrent ipmi_exporter scrapes (default 16; "
                         "with --fleet: KILN_IPMI_WORKERS, default 64)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of both sides, alternating which goes first")
    ap.add_argument("--timeout", type=float, default=2.0, help="Kiln's seconds per IPMI answer")
    ap.add_argument("--exporter-timeout", type=float, default=10.0, help="ipmi_exporter's module timeout (s)")
    ap.add_argument("--steady", type=int, default=5,
                    help="polls after the cold one: the first also reads the device id and FRU, the rest are steady")
    ap.add_argument("--profile", help="run Kiln's side under py-spy, collapsed stacks to this file")
    ap.add_argument("--exporter", help="ipmi_exporter binary (default: Debian's, installed if missing)")
    ap.add_argument("--freeipmi-path", default="/usr/sbin", help="directory of FreeIPMI's tools")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--fleet", type=int, help="two-worker fleet mode with this many BMCs (benchmarks/ipmi_fleet.py)")
    ap.add_argument("--kiln-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    if args.fleet is not None:
        from benchmarks import ipmi_fleet
        shared = [*(["--quick"] if args.quick else []), *(["--keep"] if args.keep else []),
                  *(["--concurrency", str(args.concurrency)] if args.concurrency else [])]
        return ipmi_fleet.main(["--bmcs", str(args.fleet), *shared, *rest])
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    args.concurrency = args.concurrency or 16
    if args.kiln_worker:
        return kiln_worker(args)
    n = 100 if args.quick else args.bmcs
    ensure_exporter(args)
    tmp = Path(tempfile.mkdtemp(prefix="kiln-ipmi-bench-"))
    state = tmp / "bmcsim"
    load = {"start": [round(x, 2) for x in os.getloadavg()]}
    kilns: list[dict] = []
    bases: list[dict] = []
    try:
        log(f"starting {n} simulated BMCs")
        started = subprocess.run(["bash", str(BMCSIM_SH), "start", str(state), str(n)], capture_output=True,
                                 text=True, timeout=300, check=False)
        if started.returncode != 0:
            sys.exit(f"ipmi_poll: bmcsim did not start: {started.stderr.strip()[-500:]}")
        log(started.stdout.strip().splitlines()[-1])
        doc = json.loads((state / "bmcs.json").read_text())
        sim_pids = [p["pid"] for p in doc["processes"]]
        with running_exporter(args, tmp, doc["bmcs"][0]["username"], doc["bmcs"][0]["password"]) as (url, pid):
            scrape(url, doc["bmcs"][0], 60)  # warm-up: one scrape, not timed
            for r in range(args.repeat):
                sides = [lambda: kilns.append(run_kiln(args, state, sim_pids)),
                         lambda: bases.append(run_baseline(url, pid, args, doc["bmcs"], sim_pids))]
                for side in sides if r % 2 == 0 else sides[::-1]:
                    side()
    finally:
        subprocess.run(["bash", str(BMCSIM_SH), "stop", str(state)], capture_output=True, timeout=60, check=False)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    load["end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(summary(n, args, kilns, bases, load)))


if __name__ == "__main__":
    main()
