"""What persisting one IPMI cycle costs: `collectors.store.persist_results` replayed on a private
PostgreSQL with the samples of a real IpmiCollector poll of N simulated BMCs.

    python -m benchmarks.persist_profile [--bmcs 500] [--cycles 3] [--profile 15]

Polls the BMC simulator (tests/peers/bmcsim.sh) twice (the first poll also reads device id
and FRU), stops it, then stores `--cycles` cycles in one transaction each, as `kiln worker`
does: the first poll's results into empty tables, then the second poll's, its times moved on by
60 s a cycle. Per cycle: this process's CPU (time.process_time), the PostgreSQL backend's CPU
(/proc of `pg_backend_pid()`, so the server must run on this machine), and the statements sent
(SQLAlchemy `before_cursor_execute`; an executemany counts once per row: psycopg
sends each as its own statement). With `--profile K` it
prints cProfile's top K functions of the last cycle. One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.ipmi_poll import log
from benchmarks.soak import PrivatePostgres, bmc_simulator, seed


def backend_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a local process (a PostgreSQL backend) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def poll(bmcs: list[dict]) -> list[list]:
    """Two IpmiCollector polls of every BMC (node `node-NAME`, as `seed` names them)."""
    from collectors.ipmi import IpmiCollector, IpmiTarget

    targets = [IpmiTarget(f"node-{b['name']}", b["host"], b["port"], b["username"], b["password"]) for b in bmcs]
    with IpmiCollector(targets, workers=64, timeout=2.0, retries=1) as collector:
        return [collector.collect() for _ in range(2)]


def shifted(results: list, by: timedelta) -> list:
    """`results` with every sample's time moved on by `by`."""
    return [replace(r, samples=[s._replace(ts=s.ts + by) for s in r.samples]) for r in results]


def replay(url: str, polls: list[list], cycles: int, top: int) -> list[dict]:
    """Store `cycles` cycles with persist_results; what each cost."""
    from sqlalchemy import event, text
    from sqlmodel import Session

    from collectors.store import persist_results
    from kiln.db import create_db_engine

    engine = create_db_engine(url)
    statements = [0]

    def count(_conn, _cursor, _sql, parameters, _context, executemany):  # an executemany runs once per row
        statements[0] += len(parameters) if executemany else 1

    event.listen(engine, "before_cursor_execute", count)
    out = []
    start = datetime.now(UTC)
    for i in range(cycles):
        results = shifted(polls[min(i, 1)], timedelta(seconds=60 * i) + (start - polls[0][0].samples[0].ts))
        profiler = cProfile.Profile() if top and i == cycles - 1 else None
        with Session(engine) as session:
            pid = session.execute(text("SELECT pg_backend_pid()")).scalar()
            pg0, cpu0, n0 = backend_cpu_s(pid), time.process_time(), statements[0]
            if profiler:
                profiler.enable()
            persist_results(session, "ipmi", results, now=start + timedelta(seconds=60 * i))
            session.commit()
            if profiler:
                profiler.disable()
            cpu, pg, n = time.process_time() - cpu0, backend_cpu_s(pid) - pg0, statements[0] - n0
        samples = sum(len(r.samples) for r in results)
        out.append({"cycle": i, "samples": samples, "python_cpu_s": round(cpu, 3), "pg_cpu_s": round(pg, 3),
                    "statements": n, "python_ms_per_bmc": round(cpu * 1000 / len(results), 3),
                    "pg_ms_per_bmc": round(pg * 1000 / len(results), 3)})
        log(f"cycle {i}: {json.dumps(out[-1])}")
        if profiler:
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(top)
    engine.dispose()
    return out


def main(argv: list[str] | None = None) -> None:
    """Poll, replay, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bmcs", type=int, default=500)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top K of the last cycle")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kiln-persist-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        pg = PrivatePostgres(work)
        pg.start()
        try:
            with bmc_simulator(work / "bmcs", args.bmcs) as bmcs:
                seed(pg.url, bmcs, datetime.now(UTC) - timedelta(days=1))
                polls = poll(bmcs)
            cycles = replay(pg.url, polls, args.cycles, args.profile)
        finally:
            pg.stop()
    print(json.dumps({"benchmark": "persist_profile", "bmcs": args.bmcs, "cycles": cycles,
                      "load_average": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
