"""One node-hour's metered energy, split among who held the node, its GPUs, CPUs and memory.

The node's kWh (DCMI, `node_energy_hour`) goes, per hour:

1. to the tenants leasing the node whole, pro rata to the part of the hour each held it;
2. of the rest of the hour (not leased), the GPUs' own energy (DCGM/AMD energy counters,
   `gpu_energy_hour`; never more than the node drew) GPU by GPU to the namespaces the exporters
   saw on each GPU (`metering.gpu_placement`: a busy GPU's energy to whoever ran on it) where
   they saw every namespace that requested GPUs on the node in an hour nobody leased it; else to
   the Kubernetes tenants by their share of the node's GPU-time (GPU-microseconds, MIG instances
   and time-sliced pods as `metering.gpu_shares` counts them);
3. the node's remaining energy (DCMI − Σ GPUs, never negative) half by the tenants' share of the
   node's CPU cores and half by their share of its memory (requests, core- and GiB-microseconds);
   where the node has no GPU energy counter, or its cores/memory are not known, that part goes
   by GPU share too (as before GPU meters existed).

Whatever no tenant held is idle energy. Shares are exact fractions, rounded once by largest
remainder into integer parts (1/3,600,000,000 kWh), so for every node-hour the tenants' parts +
the idle parts = the node's metered parts exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from metering.gpu_shares import ExactShares
from metering.intervals import MICROS_PER_HOUR

GPU, CPU, MEMORY = "gpu", "cpu", "memory"


@dataclass
class NodeHourClaims:
    """Who held what of one node in one hour: lessees' microseconds, and Kubernetes tenants'
    request-microseconds per resource (GPU-, core-, byte-microseconds) outside leased time."""

    leased: dict[Hashable, int] = field(default_factory=lambda: defaultdict(int))
    requests: dict[str, dict[Hashable, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))


@dataclass(frozen=True)
class GpuHeld:
    """One GPU's own energy in the hour (parts) and who held it: key → weight, out of `capacity`
    per hour (`metering.gpu_placement.GpuHolders`, namespaces resolved to keys); `unbilled`: the
    weight of holders no tenant is known for (their part stays idle)."""

    parts: int
    weights: Mapping[Hashable, int]
    capacity: int
    unbilled: int = 0


@dataclass(frozen=True)
class NodeCapacity:
    """What the node has: GPUs, CPU cores and bytes of memory (None: not known)."""

    gpus: int
    cores: int | None = None
    memory_bytes: int | None = None


def _denominator(weights: Mapping[Hashable, int], capacity: int) -> int:
    """The capacity-time the tenants' weights are a share of (their total, if above capacity)."""
    return max(capacity, sum(weights.values()))


def split_node_energy(total: int, gpu_parts: int | None, claims: NodeHourClaims, node: NodeCapacity,
                      placed: Sequence[GpuHeld] = ()) -> dict[Hashable, int]:
    """Parts of `total` (the node-hour's kWh in parts) per key; `gpu_parts`: its GPUs' own energy
    in parts (None where the node has no GPU energy counter); `placed`: each GPU's energy and
    holders, given only for an hour without a lease (`metering.gpu_placement.placed_gpus`) and
    then used instead of the GPU-time shares (their parts add up to `gpu_parts`). The rest is idle."""
    shares = ExactShares()
    for key, micros in claims.leased.items():
        shares.add(key, total * micros, MICROS_PER_HOUR)
    free = MICROS_PER_HOUR - min(sum(claims.leased.values()), MICROS_PER_HOUR)
    unleased = total * free  # over MICROS_PER_HOUR, as are the energies below
    rest = [(claims.requests.get(kind, {}), capacity * free)
            for kind, capacity in ((CPU, node.cores), (MEMORY, node.memory_bytes)) if capacity]
    if gpu_parts is None or len(rest) < 2:
        gpu_energy, rest = unleased, []
    else:
        gpu_energy = min(gpu_parts * free, unleased)
    gpu_weights = claims.requests.get(GPU, {})
    if placed and rest and gpu_parts:
        for gpu in placed:  # gpu_energy × this GPU's part of the GPUs' energy × the holder's weight
            denominator = max(gpu.capacity, sum(gpu.weights.values()) + gpu.unbilled)
            for key, weight in gpu.weights.items():
                shares.add(key, gpu_energy * gpu.parts * weight, MICROS_PER_HOUR * gpu_parts * denominator)
    elif gpu_weights and (denominator := _denominator(gpu_weights, node.gpus * free)):
        for key, weight in gpu_weights.items():
            shares.add(key, gpu_energy * weight, MICROS_PER_HOUR * denominator)
    for weights, capacity in rest:  # half by CPU share, half by memory share
        denominator = _denominator(weights, capacity)
        for key, weight in weights.items():
            shares.add(key, (unleased - gpu_energy) * weight, 2 * MICROS_PER_HOUR * denominator)
    return shares.parts()
