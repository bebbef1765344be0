"""The soak's load and its measurements: the bounded API request loop and its latency
summary, the watch on each node's first DCMI reading, and the end-of-run checks of polls,
energy and usage (see `benchmarks.soak` for what each number means).
"""

from __future__ import annotations

import contextlib
import random
import statistics
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
from sqlalchemy import func, select, text
from sqlmodel import Session


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
        """Start the request threads; they run until `stop` is set."""
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


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values` by rank; NaN for none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")



def api_summary(samples: list[tuple[float, str, int, float]]) -> dict:
    """Requests, errors (non-200 or no answer) and p50/p99 latency in ms of the load's samples."""
    latencies = [s[3] for s in samples if s[2] == 200]
    errors = sum(1 for s in samples if s[2] != 200)
    return {"requests": len(samples), "errors": errors,
            "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None}


def check(url: str, bmcs: list[dict], first: dict[str, datetime], interval: int,
          window: tuple[datetime, datetime]) -> dict:
    """Polls, energy and usage against what the run should have produced (see `benchmarks.soak`'s docstring)."""
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
