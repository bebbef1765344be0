"""GPUs shared within an hour: MIG instances and time-sliced GPUs, split so the parts add up.

A node's GPUs form a pool per hour. Every claim on it is counted in compute-slice-microseconds:
a whole GPU is all of its model's slices (`collectors.mig_profiles.total_slices`: 7 on
A100/H100/H200, 4 on A30, 1 for a GPU that has no MIG), a MIG instance its profile's slices.
The pool's capacity is the node's GPUs × slices × one hour. Per node and hour:

- claims within capacity (MIG instances, whole GPUs) get exactly their compute fraction:
  a `3g.40gb` instance held for an hour is 3/7 GPU-hour;
- while claims exceed capacity (time-slicing: the device plugin advertises `replicas` per GPU,
  so several pods share one), the node's GPUs are split among the claims present at that
  instant in proportion to their requests — equally among one-GPU pods — so the pods together
  hold exactly the GPUs (a pod alone on a time-sliced GPU holds all of it). DCGM reports the
  same values for every pod of a time-sliced GPU (NVIDIA/dcgm-exporter#582, #587), so measured
  per-pod use is not available to weight by;
- what no claim holds is idle capacity (`metering.idle`).

Shares are integer parts (`metering.money.PARTS_PER_UNIT` per GPU-hour, i.e. GPU-microseconds),
allocated by largest remainder so that for every node and hour the claims' parts + the idle
parts = the node's GPU-hours exactly, and no claim is more than one part from its exact share.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from math import lcm

from metering.intervals import MICROSECOND
from metering.periods import HOUR, hours_between


@dataclass(frozen=True)
class Pool:
    """A node's GPU pool: how many whole GPUs (None: not known, never scaled) of how many slices."""

    gpus: int | None
    slices: int


class ExactShares:
    """Exact rational shares per key, kept as integer numerators over a few denominators (much
    faster than `Fraction` sums), rounded once by largest remainder (`parts`)."""

    def __init__(self) -> None:
        self.numerators: dict[int, dict[Hashable, int]] = defaultdict(lambda: defaultdict(int))  # denominator → key → Σ

    def add(self, key: Hashable, numerator: int, denominator: int = 1) -> None:
        """Add numerator / denominator to `key`'s share."""
        self.numerators[denominator][key] += numerator

    def parts(self) -> dict[Hashable, int]:
        """Integer parts that sum to the exact total rounded down: each share floored, the parts left
        over to the largest remainders (ties: the order keys were first added)."""
        common = lcm(*self.numerators) if self.numerators else 1
        exact: dict[Hashable, int] = defaultdict(int)  # numerators over `common`
        for denominator, shares in self.numerators.items():
            for key, numerator in shares.items():
                exact[key] += numerator * (common // denominator)
        floors = {key: value // common for key, value in exact.items()}
        left = sum(exact.values()) // common - sum(floors.values())
        for key in sorted(exact, key=lambda k: -(exact[k] % common))[:max(left, 0)]:
            floors[key] += 1
        return floors


Segment = tuple[Hashable, datetime, datetime, int]  # claim key, start, end, slices


def split_pool_hour(pool: Pool, segments: list[Segment]) -> dict[Hashable, int]:
    """GPU-hour parts per claim key for one node and hour, from its claims' time segments.

    At every instant, claims within capacity hold their slices (a whole GPU = all of them); when
    they exceed it (time-slicing), the node's GPUs are shared in proportion to the claims. Exact
    shares are summed over the hour, then rounded by largest remainder to integer parts that sum
    to the exact total rounded down."""
    cuts = sorted({t for _, a, b, _ in segments for t in (a, b)})
    shares = ExactShares()
    for t0, t1 in zip(cuts, cuts[1:]):
        active = [(key, slices) for key, a, b, slices in segments if a <= t0 and t1 <= b]
        demand = sum(slices for _, slices in active)
        if not demand:
            continue
        micros = (t1 - t0) // MICROSECOND
        oversubscribed = pool.gpus is not None and demand > pool.gpus * pool.slices
        for key, slices in active:
            if oversubscribed:  # time-sliced: the GPUs, shared pro rata
                shares.add(key, slices * micros * pool.gpus, demand)
            else:
                shares.add(key, slices * micros, pool.slices)
    return shares.parts()


@dataclass
class SharedGpuHours:
    """Claims on nodes' GPU pools, gathered per node and hour, then split (`split`)."""

    pools: Mapping[int, Pool]
    segments: dict[tuple[int, datetime], list[Segment]] = field(default_factory=lambda: defaultdict(list))

    def add(self, node_id: int, key: Hashable, start: datetime, end: datetime, slices: int) -> None:
        """Claim `slices` compute slices of the node's pool over [start, end)."""
        for hour in hours_between(start, end):
            self.segments[(node_id, hour)].append((key, max(start, hour), min(end, hour + HOUR), slices))

    def split(self) -> Iterator[tuple[int, datetime, Hashable, int]]:
        """(node id, hour, claim key, GPU-hour parts) for every claim with a non-zero share."""
        for (node_id, hour), segments in self.segments.items():
            for key, parts in split_pool_hour(self.pools[node_id], segments).items():
                if parts:
                    yield node_id, hour, key, parts


def oversubscribed(intervals: list[tuple[datetime, datetime, int]], gpus: int) -> bool:
    """Whether whole-GPU requests [(start, end, count)] ever exceed `gpus` at once (time-slicing)."""
    # (instant, change) tuples sort ends (negative) before starts at the same instant
    events = sorted([(a, count) for a, _, count in intervals] + [(b, -count) for _, b, count in intervals])
    running = 0
    for _, change in events:
        running += change
        if running > gpus:
            return True
    return False
