"""Node events from what the collectors report, one per transition, never one per poll:

- a sensor's threshold state changing (ok → warning/critical and back; a sensor first read in
  warning or critical is news too), kind `sensor`;
- a BMC that answered before and stops answering its collector (ipmi, redfish), and answers again,
  kind `bmc`. The collector's error names the BMC's address, so the event does not carry it
  (tenants read the node's events; infra admins read the error on the node page and in the health API);
- a GPU's XID error (the exporter's last-XID field changing to a new non-zero code), kind `xid`,
  also kept as a `gpu_xid_event` row for the node page's XID timeline.

`collectors.store.persist_results` calls these inside the cycle's transaction, before it overwrites
the snapshots and target states they compare against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from collectors.base import Sample
from collectors.models import GpuXidEvent, HealthSnapshot
from fleet.models import Gpu, Node, NodeEvent

SENSOR_EVENT_KIND, BMC_EVENT_KIND, XID_EVENT_KIND = "sensor", "bmc", "xid"
HEALTH_EVENT_KINDS = (SENSOR_EVENT_KIND, BMC_EVENT_KIND, XID_EVENT_KIND)
BMC_COLLECTORS = frozenset({"ipmi", "redfish"})
XID_METRIC = "gpu_last_xid"
STATE_WORDS = {0: "ok", 1: "warning", 2: "critical"}

# The meaning of the common XIDs, from NVIDIA's XID catalogue ("XID Errors", Catalog of XID
# errors, https://docs.nvidia.com/deploy/xid-errors/index.html, and its Ampere-and-newer catalogue
# https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html).
XID_MEANINGS = {
    13: "Graphics Engine Exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "Preemptive cleanup, due to previous errors",
    48: "Double Bit ECC Error",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure",
    74: "NVLink Error",
    79: "GPU has fallen off the bus",
    92: "High single-bit ECC error rate",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
}


def xid_meaning(code: int) -> str:
    """NVIDIA's meaning of an XID code, for the common ones; a pointer to the catalogue otherwise."""
    return XID_MEANINGS.get(code, "see NVIDIA's XID catalogue")


def gpu_label(index: int | None, model: str | None, uuid: str) -> str:
    """How a GPU is named in events and chart legends: `GPU 0 · H100 …c0ffee` (index, model, UUID tail)."""
    tail = f"…{uuid[-6:]}" if len(uuid) > 6 else uuid
    head = f"GPU {index}" if index is not None else "GPU"
    return " · ".join(part for part in (head, model, tail) if part)


def _state_word(state: int | None) -> str:
    return STATE_WORDS.get(state, str(state)) if state is not None else "ok"


def sensor_events(session: Session, rows: Mapping[tuple[str, str, str], dict]) -> None:
    """A node event for each sensor row (`collectors.store.write_snapshots`' rows about to be
    written) whose threshold state differs from its stored one; no state read counts as ok."""
    stated = {key: row for key, row in rows.items() if row["state"] is not None and row["node_id"] is not None}
    if not stated:
        return
    stored = select(HealthSnapshot.entity, HealthSnapshot.metric, HealthSnapshot.labels_key, HealthSnapshot.state)
    before = {(s.entity, s.metric, s.labels_key): s.state for s in session.exec(stored.where(
        col(HealthSnapshot.entity).in_({e for e, _, _ in stated}), col(HealthSnapshot.metric).in_({m for _, m, _ in stated})))}
    for key, row in stated.items():
        known = key in before
        old = before.get(key) or 0
        if row["state"] == old:
            continue
        sensor = row["labels"].get("name") or row["metric"]
        reading = f" ({row['value']:g} {row['unit']})" if row["value"] is not None else ""
        change = (f"went from {_state_word(old)} to {_state_word(row['state'])}" if known
                  else f"is {_state_word(row['state'])} at its first reading")
        session.add(NodeEvent(node_id=row["node_id"], at=row["observed_at"], kind=SENSOR_EVENT_KIND,
                              message=f"Sensor {sensor} {change}{reading}"[:2000], actor=row["source"]))


def bmc_events(session: Session, collector: str, changes: Sequence[tuple[str, bool, int]], now: datetime) -> None:
    """A node event for each BMC of `collector` that stopped answering or answers again:
    `changes` are (target = node name, answers now, failed polls before this one)."""
    if collector not in BMC_COLLECTORS or not changes:
        return
    ids = dict(session.exec(select(Node.name, Node.id).where(col(Node.name).in_([t for t, _, _ in changes]))).all())
    for target, up, failures in changes:
        if target not in ids:
            continue
        message = (f"BMC answers the {collector} collector again, after {failures} failed poll{'s' * (failures != 1)}"
                   if up else f"BMC stopped answering the {collector} collector")
        session.add(NodeEvent(node_id=ids[target], at=now, kind=BMC_EVENT_KIND, message=message, actor=collector))


def xid_events(session: Session, samples: Sequence[Sample], node_of: Mapping[str, int | None]) -> None:
    """A `gpu_xid_event` row and a node event for each GPU whose last XID changed to a new non-zero
    code since its stored snapshot (`node_of`: GPU UUID → node id, where known)."""
    latest: dict[str, Sample] = {}
    for s in samples:
        if s.metric == XID_METRIC and math.isfinite(s.value) and s.value > 0:
            if s.entity not in latest or s.ts >= latest[s.entity].ts:
                latest[s.entity] = s
    if not latest:
        return
    before: dict[str, float | None] = {}
    for snapshot in session.exec(select(HealthSnapshot).where(
            HealthSnapshot.metric == XID_METRIC, col(HealthSnapshot.entity).in_(list(latest)))
            .order_by(col(HealthSnapshot.observed_at))):
        before[snapshot.entity] = snapshot.value  # the newest last
    gpus = {g.uuid: g for g in session.exec(select(Gpu).where(col(Gpu.uuid).in_(list(latest))))}
    for uuid, s in latest.items():
        code = int(s.value)
        if before.get(uuid) == code:
            continue
        node_id = node_of.get(uuid)
        session.add(GpuXidEvent(entity=uuid, node_id=node_id, at=s.ts, code=code))
        if node_id is not None:
            gpu = gpus.get(uuid)
            label = gpu_label(gpu.index if gpu else None, gpu.model if gpu else s.labels.get("modelName"), uuid)
            session.add(NodeEvent(node_id=node_id, at=s.ts, kind=XID_EVENT_KIND,
                                  message=f"{label}: XID {code} — {xid_meaning(code)}"[:2000], actor=s.source))
