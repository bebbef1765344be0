"""The collector contract: a collector returns Samples and never touches the database.

Modelled on prometheus/client_python's `Collector.collect()`: each source is one module
whose client or endpoint is injected, so it can be tested against its real peer alone; the
scheduler persists what collectors return (health snapshots, rollups, usage inputs).
Metric names follow the exporters people already graph (ipmi_exporter, dcgm-exporter, AMD
device-metrics-exporter), mapped by declarative tables, not `if` chains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple, Protocol

NO_LABELS: Mapping[str, str] = MappingProxyType({})  # a sample without labels (shared, read-only)
# The label a node's second BMC source puts on the series it reports under the primary's names
# (ipmi_*): `bmc="redfish"` on what the Redfish collector reads through an ipmi:// node's
# redfish_address, so the two sources' readings are kept apart (README, "Two BMC sources").
SECOND_BMC_LABEL = "bmc"


class Sample(NamedTuple):
    """One reading: `metric` of `entity` (a node name, a GPU UUID, a namespace) at `ts`."""

    source: str  # collector name: ipmi, redfish, dcgm, rocm, kubernetes, opencost
    entity: str
    metric: str
    value: float
    unit: str  # watts, celsius, rpm, volts, percent, bytes, joules, count, state, ...
    labels: Mapping[str, str]
    ts: datetime


def is_second_bmc(sample: Sample) -> bool:
    """Whether `sample` came from a node's second, collection-only BMC address."""
    return SECOND_BMC_LABEL in sample.labels


@dataclass(frozen=True)
class TargetResult:
    """What one target (a BMC, a Prometheus query, an API) gave in one collection."""

    target: str
    ok: bool
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    timed_out: bool = False
    skipped: dict[str, int] = field(default_factory=dict)  # series left out, by reason
    # False: not polled this cycle (its previous poll still runs, the collector is closed), so
    # nothing is known about it: its stored state is left as it was
    polled: bool = True


Progress = Callable[[TargetResult], None]  # told each target's result as it arrives (CLI progress bars)
# whether a target may still be polled in this cycle (False: another replica took its lease)
Held = Callable[[str], bool]
LEASE_LOST = "not polled: another worker took its lease mid-cycle"


def not_held(target: str) -> TargetResult:
    """The result of a target skipped because this replica lost its lease (nothing is stored)."""
    return TargetResult(target, ok=False, error=LEASE_LOST, polled=False)


def skipped_summary(skipped: Mapping[str, int]) -> str | None:
    """`skipped N series: 2 no GPU identity, 1 blank value …` for TargetResult.error, or None."""
    if not skipped:
        return None
    return f"skipped {sum(skipped.values())} series: " + ", ".join(
        f"{count} {why}" for why, count in sorted(skipped.items()))


class Collector(Protocol):
    """A source of samples. `collect` returns a result per target; a failing target is a
    result with `ok=False` and a readable `error`, never an exception that stops the others."""

    name: str

    def collect(self) -> Iterable[TargetResult]:
        """Collect from every target once."""
        ...
