"""IPMI at fleet scale: `kiln worker` processes on PostgreSQL share N simulated BMCs through
target leases (collectors/sharding.py); then one worker is killed and a survivor takes over.

    python -m benchmarks.ipmi_poll --fleet 10000 --worker-procs 2 --kill-one [--interval 60]
                                   [--cycles 3] [--concurrency 64] [--keep]
    python -m benchmarks.ipmi_poll --fleet 200 --quick      # 200 BMCs, 10 s cycles (under a minute or two)

Peers on 127.0.0.1, started here: a private PostgreSQL cluster and the BMC simulator
(benchmarks/soak.py's), one node per BMC. The workers are real `kiln worker` processes
(KILN_IPMI_INTERVAL = `--interval`, KILN_IPMI_WORKERS = `--concurrency`), each serving its
/metrics on its own port. Measured from outside, every `--tick` seconds:

- `collector_target_state`: every poll sets the target's `last_attempt_at` to the time its
  cycle's results were stored, so each distinct value is one cycle of one worker, and each
  target's successive values are its polls; the time of each poll itself is the
  `observed_at` of the BMC's `ipmi_up{collector="chassis"}` snapshot (the sample's time, taken
  when the BMC answered). `polled_once_per_cycle` is true when, after the warm-up, every gap
  between two polls of a BMC lies within 0.5-1.5 intervals (no BMC polled twice in a cycle,
  none skipped); `min_gap_s`/`max_gap_s` are poll-to-poll, `stored_gap_s` store-to-store;
- each worker's `kiln_collector_cycle_duration_seconds{collector="ipmi"}`: a new observation
  is one cycle's duration (its start: the tick's time less the duration, so ± one tick);
  `cycle_start_gap_s` the start-to-start spacing of each worker's cycles; its CPU from /proc.

The warm-up lasts until every BMC was polled three times: the cold poll, the one that reads
the device id and FRU (slower), and a first steady one, which still finds part of the
sessions open (idle under 50 s since the slower poll before) and so is shorter than the
steady cycles after it, where every session has idled out and is opened again.

Once every BMC was polled `--cycles` times more (`--cycles` - 1 steady gaps each), the last
worker is SIGKILLed. Its BMCs stay leased until their leases lapse (one interval + 25 %), then
a survivor claims them: `takeover` is the survivor's first cycle that polls them (cold: new
sessions and SDR reads for those, its own BMCs stay warm), `fits_cycle` whether it took at
most one interval. One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.ipmi_poll import log, proc_cpu_s
from benchmarks.soak import SECRET_KEY, PrivatePostgres, bmc_simulator, free_port, seed, start_kiln

WARM_UP_POLLS = 3  # cold, device id + FRU, first steady (see the module docstring)
CYCLE_METRIC = re.compile(r'^kiln_collector_cycle_duration_seconds_(sum|count)\{collector="ipmi"\} (\S+)$', re.M)


class Watch:
    """What the workers did, sampled every tick: target polls, cycle durations, CPU."""

    def __init__(self, url: str, workers: dict[str, tuple[int, int]]) -> None:
        from kiln.db import create_db_engine

        self.engine = create_db_engine(url)
        self.workers = workers  # name -> (pid, metrics port)
        # target -> its polls: (stored at, owner, up, polled at)
        self.polls: dict[str, list[tuple[datetime, str | None, bool, datetime | None]]] = {}
        self.cycles: list[dict] = []
        self.cpu: dict[str, list[tuple[float, float]]] = {w: [] for w in workers}
        self._last: dict[str, tuple[float, float]] = {}
        self.stop = threading.Event()
        self.dead: set[str] = set()

    def tick(self) -> None:
        """Read the target states, each live worker's cycle histogram and CPU."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT t.target, t.lease_owner, t.last_attempt_at, t.up, h.observed_at FROM collector_target_state t "
                "LEFT JOIN health_snapshot h ON h.entity = t.target AND h.metric = 'ipmi_up' "
                "AND h.labels_key = 'collector=chassis' "
                "WHERE t.collector = 'ipmi' AND t.last_attempt_at IS NOT NULL")).all()
        for target, owner, at, up, polled in rows:
            seen = self.polls.setdefault(target, [])
            if not seen or seen[-1][0] != at:
                seen.append((at, owner, up, polled))
        now = time.monotonic()
        for name, (pid, port) in self.workers.items():
            if name in self.dead:
                continue
            cpu = live_cpu_s(pid)
            if cpu is not None:  # gone (killed meanwhile): its last sample stands
                self.cpu[name].append((now, cpu))
            with contextlib.suppress(OSError):
                text_ = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                values = {k: float(v) for k, v in CYCLE_METRIC.findall(text_)}
                total, count = values.get("sum", 0.0), values.get("count", 0.0)
                before = self._last.get(name, (0.0, 0.0))
                if count > before[1]:
                    seconds = (total - before[0]) / (count - before[1])
                    self.cycles.append({"worker": name, "ended": now, "seconds": round(seconds, 3),
                                        "cycles": int(count - before[1])})
                self._last[name] = (total, count)

    def run(self, every: float) -> None:
        """Tick until stopped."""
        while not self.stop.wait(every):
            with contextlib.suppress(Exception):  # PostgreSQL busy for a moment: next tick
                self.tick()

    def cpu_between(self, worker: str, start: float, end: float) -> float:
        """CPU seconds the worker used between two monotonic times (nearest samples)."""
        samples = self.cpu[worker]
        before = max((s for s in samples if s[0] <= start), default=samples[0])
        after = min((s for s in samples if s[0] >= end), default=samples[-1])
        return round(after[1] - before[1], 2)


def live_cpu_s(pid: int) -> float | None:
    """CPU seconds of a running process; None once it is gone or a zombie (its /proc reads 0)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return None if state in ("Z", "X") else proc_cpu_s(pid)


def gaps_summary(polls: dict[str, list], since: datetime, until: datetime, interval: float) -> dict:
    """Gaps between successive polls of each BMC stored within [since, until]: poll to poll
    (the BMC's answers), and store to store (`stored_gap_s`, the cycles' commits)."""
    pairs = [(a, b) for seen in polls.values() for a, b in zip(seen, seen[1:]) if a[0] >= since and b[0] <= until]
    gaps = [((b[3] or b[0]) - (a[3] or a[0])).total_seconds() for a, b in pairs]
    stored = [(b[0] - a[0]).total_seconds() for a, b in pairs]
    return {"gaps": len(gaps), "min_gap_s": round(min(gaps), 2) if gaps else None,
            "max_gap_s": round(max(gaps), 2) if gaps else None,
            "stored_gap_s": [round(min(stored), 2), round(max(stored), 2)] if stored else None,
            "polled_twice": sum(1 for g in gaps if g < 0.5 * interval),
            "skipped": sum(1 for g in gaps if g > 1.5 * interval)}


def gaps_by_poll(polls: dict[str, list], until: datetime) -> list[list[float]]:
    """[min, max] poll-to-poll gap between each BMC's 1st and 2nd poll, 2nd and 3rd, ... (before `until`)."""
    by_index: dict[int, list[float]] = {}
    for seen in polls.values():
        for i, (a, b) in enumerate(zip(seen, seen[1:])):
            if b[0] <= until:
                by_index.setdefault(i, []).append(((b[3] or b[0]) - (a[3] or a[0])).total_seconds())
    return [[round(min(g), 2), round(max(g), 2)] for _, g in sorted(by_index.items())]


def cycle_start_gaps(cycles: list[dict], since: float, until: float) -> dict[str, list[float]]:
    """Per worker, the spacing of its successive cycles' starts (ended - duration, ± one tick)."""
    out: dict[str, list[float]] = {}
    for worker in sorted({c["worker"] for c in cycles}):
        starts = [c["ended"] - c["seconds"] for c in cycles if c["worker"] == worker and c["cycles"] == 1
                  and since <= c["ended"] <= until]
        out[worker] = [round(b - a, 1) for a, b in zip(starts, starts[1:])]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ipmi_poll --fleet N", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bmcs", type=int, default=10000)
    ap.add_argument("--quick", action="store_true", help="at most 200 BMCs, 10 s cycles, 2 steady cycles")
    ap.add_argument("--worker-procs", type=int, default=2)
    ap.add_argument("--kill-one", action="store_true", default=True, help="kill the last worker (always done)")
    ap.add_argument("--interval", type=int, default=60, help="KILN_IPMI_INTERVAL (s)")
    ap.add_argument("--cycles", type=int, default=3, help="steady cycles measured before the kill")
    ap.add_argument("--concurrency", type=int, default=64, help="KILN_IPMI_WORKERS: BMCs polled at once per worker")
    ap.add_argument("--tick", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (worker logs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.bmcs, args.interval, args.cycles, args.tick = min(args.bmcs, 200), 10, 2, 0.5
    if args.worker_procs < 2:
        ap.error("--worker-procs must be at least 2 (one is killed)")
    work = Path(tempfile.mkdtemp(prefix="kiln-ipmi-fleet-"))
    pg = PrivatePostgres(work)
    procs: dict[str, object] = {}
    load = {"start": [round(x, 2) for x in os.getloadavg()]}
    try:
        pg.start()
        with bmc_simulator(work / "bmcsim", args.bmcs) as bmcs:
            log(f"PostgreSQL on 127.0.0.1:{pg.port}, {len(bmcs)} simulated BMCs; seeding")
            seed(pg.url, bmcs, datetime.now(UTC) - timedelta(hours=1))
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("KILN_")},
                   "KILN_DATABASE_URL": pg.url, "KILN_SECRET_KEY": SECRET_KEY, "KILN_DATA_DIR": str(work / "data"),
                   "KILN_IPMI_INTERVAL": str(args.interval), "KILN_IPMI_WORKERS": str(args.concurrency),
                   "KILN_REDFISH_INTERVAL": "3600", "KILN_SYNC_INTERVAL": "3600", "KILN_LOG_LEVEL": "WARNING"}
            names = [f"w{i + 1}" for i in range(args.worker_procs)]
            ports = {name: free_port() for name in names}
            for name in names:
                worker_env = {**env, "KILN_WORKER_NAME": name, "KILN_WORKER_METRICS_PORT": str(ports[name])}
                procs[name] = start_kiln(["worker"], worker_env, work / f"{name}.log")
            watch = Watch(pg.url, {n: (procs[n].pid, ports[n]) for n in names})  # type: ignore[attr-defined]
            thread = threading.Thread(target=watch.run, args=(args.tick,), daemon=True)
            thread.start()
            log(f"{len(names)} workers started; warming up (every BMC polled three times)")
            deadline = time.monotonic() + 7 * args.interval + 120
            while not (len(watch.polls) == len(bmcs) and all(len(p) >= WARM_UP_POLLS for p in watch.polls.values())):
                if time.monotonic() > deadline:
                    raise SystemExit(f"ipmi_fleet: the BMCs were not all polled {WARM_UP_POLLS} times; see {work}/w*.log")
                time.sleep(args.tick)
            steady_from = datetime.now(UTC)
            steady_mono = time.monotonic()
            log(f"steady: measuring {args.cycles} cycles")
            polls = WARM_UP_POLLS + args.cycles
            deadline = time.monotonic() + (args.cycles + 2) * args.interval
            while not all(len(p) >= polls for p in watch.polls.values()) and time.monotonic() < deadline:
                time.sleep(args.tick)
            time.sleep(2 * args.tick)  # the last cycles' durations, observed just after their commit
            victim, survivors = names[-1], names[:-1]
            watch.tick()
            orphans = {t for t, seen in watch.polls.items() if seen[-1][1] == victim}
            watch.dead.add(victim)  # no CPU sample of it from now on
            os.killpg(procs[victim].pid, signal.SIGKILL)  # type: ignore[attr-defined]
            procs[victim].wait()  # type: ignore[attr-defined]
            killed_at, killed_mono = datetime.now(UTC), time.monotonic()
            log(f"{victim} killed (SIGKILL), {len(orphans)} BMCs orphaned; waiting for the takeover")
            deadline = time.monotonic() + 4 * args.interval + 60
            while not all(watch.polls[t][-1][0] > killed_at for t in orphans):
                if time.monotonic() > deadline:
                    break
                time.sleep(args.tick)
            time.sleep(args.interval + 2 * args.tick)  # the survivors' next cycle: warm again
            watch.stop.set()
            thread.join(timeout=30)
            watch.tick()
            peak_rss = {n: _peak_rss_mb(procs[n].pid) for n in survivors}  # type: ignore[attr-defined]
            load["end"] = [round(x, 2) for x in os.getloadavg()]
            result = summarize(args, watch, bmcs, orphans, victim, steady_from, steady_mono, killed_at, killed_mono)
            result["peak_rss_mb"] = max(peak_rss.values())
            result["load_avg"] = load
            print(json.dumps(result))
    finally:
        for proc in procs.values():
            if proc.poll() is None:  # type: ignore[attr-defined]
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)  # type: ignore[attr-defined]
                with contextlib.suppress(Exception):
                    proc.wait(timeout=30)  # type: ignore[attr-defined]
        pg.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _peak_rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        return round(int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024, 1)  # type: ignore[union-attr]
    return None


def summarize(args: argparse.Namespace, watch: Watch, bmcs: list, orphans: set[str], victim: str,
              steady_from: datetime, steady_mono: float, killed_at: datetime, killed_mono: float) -> dict:
    """The JSON line: steady cycles, then the survivor's takeover cycle."""
    cycles_by_time: dict[datetime, list[str]] = {}
    owner_of: dict[datetime, str | None] = {}
    ok_of: dict[datetime, int] = {}
    for target, seen in watch.polls.items():
        for at, owner, up, _polled in seen:
            cycles_by_time.setdefault(at, []).append(target)
            owner_of.setdefault(at, owner)
            ok_of[at] = ok_of.get(at, 0) + bool(up)
    steady_cycles = [c for c in watch.cycles if steady_mono <= c["ended"] <= killed_mono]
    takeover_at = min((at for at, targets in cycles_by_time.items()
                       if at > killed_at and orphans & set(targets)), default=None)
    takeover: dict = {"orphans": len(orphans), "orphans_polled": 0}
    if takeover_at is not None:
        targets = set(cycles_by_time[takeover_at])
        survivor = owner_of[takeover_at]
        # its duration: the survivor's first histogram observation after the stored results
        seconds = min((c for c in watch.cycles if c["worker"] == survivor and c["ended"] >= killed_mono
                       + (takeover_at - killed_at).total_seconds() - 1), key=lambda c: c["ended"], default=None)
        takeover.update({
            "worker": survivor, "bmcs": len(targets), "orphans_polled": len(orphans & targets),
            "ok": ok_of[takeover_at], "after_kill_s": round((takeover_at - killed_at).total_seconds(), 1),
            "seconds": seconds and seconds["seconds"],
            "cpu_s": seconds and watch.cpu_between(survivor or "", seconds["ended"] - seconds["seconds"] - args.tick,
                                                   seconds["ended"]),
        })
        takeover["fits_cycle"] = bool(seconds and seconds["seconds"] <= args.interval)
    after = [c for c in watch.cycles if c["ended"] > killed_mono]
    steady = gaps_summary(watch.polls, steady_from, killed_at, args.interval)
    steady_seconds = [c["seconds"] for c in steady_cycles]
    steady_ok = [ok_of[at] / len(t) for at, t in cycles_by_time.items() if steady_from <= at <= killed_at]
    result = {
        "benchmark": "ipmi_fleet",
        "scale": len(bmcs),
        "kiln_s": takeover.get("seconds"),
        "baseline": None, "baseline_s": None, "ratio": None,
        "interval_s": args.interval,
        "worker_procs": args.worker_procs,
        "concurrency": args.concurrency,
        "steady": {"cycles": len(steady_cycles), "cycle_s": steady_seconds,
                   "max_cycle_s": max(steady_seconds, default=None),
                   "median_cycle_s": statistics.median(steady_seconds) if steady_seconds else None,
                   "cpu_s_per_cycle": {w: round(watch.cpu_between(w, steady_mono, killed_mono)
                                               / max(1, sum(1 for c in steady_cycles if c["worker"] == w)), 2)
                                       for w in watch.workers},
                   "ok_share_min": round(min(steady_ok), 4) if steady_ok else None, **steady,
                   "cycle_start_gap_s": cycle_start_gaps(watch.cycles, steady_mono - args.interval, killed_mono)},
        "gaps_by_poll": gaps_by_poll(watch.polls, killed_at),
        "killed": victim,
        "takeover": takeover,
        "cycles_after_kill_s": [(c["worker"], c["seconds"]) for c in after],
    }
    result["polled_once_per_cycle"] = (steady["gaps"] > 0 and steady["polled_twice"] == 0 and steady["skipped"] == 0)
    result["ok"] = bool(result["polled_once_per_cycle"] and takeover.get("fits_cycle")
                        and takeover["orphans_polled"] == len(orphans))
    return result
