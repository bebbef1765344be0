"""What only the Redfish collector reports, stored: a node's GPU inventory and its BMC event log.

GPU inventory (`redfish_gpu_info` samples, one per GPU `Processor`): each GPU updates the node's
`Gpu` row it matches, else becomes a new row. A GPU matches the row whose `uuid` is its UUID
(compared without dcgm-exporter's `GPU-` prefix and case) or its serial (AMD's exporter names a
GPU by its serial, which Kiln keeps as the GPU's `uuid`), else the row at the same index (the
GPU's place among the system's GPUs, in Id order) when one of the two has no identity to
compare. A matched row keeps what it has that Redfish does not say (a UUID from enrolment or
DCGM/ROCm, which map their series by it), so the exporters' GPUs are never duplicated; a row
takes Redfish's UUID only when it has none and no other GPU has it; rows Redfish does not list
are kept. Nothing changes when the Processors part failed.

Event log (`redfish_log_entry` samples, oldest first): each entry becomes a `NodeEvent` (kind
`bmc_log`, actor `redfish`, at the entry's `Created`, or at the poll's time where `Created` is
later), so a node's history (newest first) shows them, and `bmc_log_cursor` remembers the newest
entry per node and log: the next poll asks for the entries after it only (collectors/redfish.py
`log_cursors`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from collectors.base import Sample, TargetResult
from collectors.models import BmcLogCursor
from collectors.redfish import LogCursor
from collectors.redfish_readers import GPU_INFO, LOG_ENTRY, entry_key
from collectors.utilisation_days import gpus_learned
from fleet.models import Gpu, Node, NodeEvent

LOG_EVENT_KIND, LOG_ACTOR = "bmc_log", "redfish"
VENDORS = (("nvidia", "nvidia"), ("advanced micro", "amd"), ("amd", "amd"), ("intel", "intel"))


def log_cursors(session: Session, nodes: Sequence[Node]) -> dict[str, dict[str, LogCursor]]:
    """Per node name, per log, the newest entry already stored."""
    names = {n.id: n.name for n in nodes}
    out: dict[str, dict[str, LogCursor]] = {}
    for row in session.exec(select(BmcLogCursor).where(col(BmcLogCursor.node_id).in_(list(names)))):
        out.setdefault(names[row.node_id], {})[row.log] = LogCursor(row.entry, row.created)
    return out


def persist_redfish(session: Session, results: Sequence[TargetResult]) -> None:
    """Store each polled node's GPU inventory and its new log entries."""
    ids = dict(session.exec(select(Node.name, Node.id).where(col(Node.name).in_([r.target for r in results]))).all())
    for result in results:
        node_id = ids.get(result.target)
        if node_id is None or not result.ok:
            continue
        gpus = [s for s in result.samples if s.metric == GPU_INFO]
        if gpus:
            sync_gpus(session, node_id, gpus)
        store_log_entries(session, node_id, [s for s in result.samples if s.metric == LOG_ENTRY])


def vendor_of(manufacturer: str) -> str:
    """Kiln's vendor name (nvidia, amd, intel) of a Redfish `Manufacturer`, else its first word."""
    lowered = manufacturer.lower()
    return next((v for key, v in VENDORS if key in lowered), (lowered.split() or ["unknown"])[0][:16])


def _uuid_key(uuid: str | None) -> str:
    return (uuid or "").lower().removeprefix("gpu-")


def sync_gpus(session: Session, node_id: int, gpus: Sequence[Sample]) -> None:
    """Update or add the node's `Gpu` rows from its GPU Processors (see the module docstring)."""
    rows = list(session.exec(select(Gpu).where(Gpu.node_id == node_id)))
    by_key = {_uuid_key(r.uuid): r for r in rows if r.uuid}
    by_index = {r.index: r for r in rows}
    claimed: set[int] = set()  # id() of the rows already given a GPU this poll
    learned: list[str] = []
    ordered = sorted(gpus, key=lambda s: entry_key({"Id": s.labels.get("id", "")})[1])
    for index, gpu in enumerate(ordered):
        labels = gpu.labels
        keys = [k for k in (labels.get("uuid"), labels.get("serial")) if k]  # AMD's exporter: the serial
        row = next((by_key[_uuid_key(k)] for k in keys if _uuid_key(k) in by_key
                    and id(by_key[_uuid_key(k)]) not in claimed), None)
        candidate = by_index.get(index)
        if row is None and candidate is not None and id(candidate) not in claimed and (
                not candidate.uuid or not keys):
            row = candidate
        if row is None:
            row = Gpu(node_id=node_id, index=index if index not in by_index else max(by_index) + 1, model="")
            rows.append(row)
            by_index[row.index] = row
        claimed.add(id(row))
        uuid = (labels.get("uuid") or "")[:64]
        if not row.uuid and uuid and _uuid_key(uuid) not in by_key and not session.exec(
                select(Gpu.id).where(Gpu.uuid == uuid, Gpu.node_id != node_id)).first():
            row.uuid = uuid  # never one another GPU has (a BMC's error): Gpu.uuid is unique
            by_key[_uuid_key(uuid)] = row
            learned.append(uuid)
        row.model = (labels.get("model") or row.model)[:128]
        row.vendor = vendor_of(labels["vendor"]) if labels.get("vendor") else row.vendor
        row.memory_mib = int(labels["memory_mib"]) if labels.get("memory_mib", "").isdigit() else row.memory_mib
        session.add(row)
    session.flush()
    gpus_learned(session, learned)  # its utilisation samples already summed without it


def _created(text: str, fallback: datetime) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return fallback
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def store_log_entries(session: Session, node_id: int, entries: Sequence[Sample]) -> None:
    """Add each new entry as a node event (oldest first, so the history lists the newest first)
    and move the node's cursor of each log to its newest entry."""
    newest: dict[str, Mapping[str, str]] = {}
    for entry in entries:
        labels = entry.labels
        code = f" ({labels['code']})" if labels.get("code") else ""
        severity = labels.get("severity") or "Event"
        # at the entry's Created, never later than the poll that read it: a BMC clock running ahead
        # must not date an entry into a later lease's window (tenants see events from their lease on)
        at = min(_created(labels.get("created", ""), entry.ts), entry.ts)
        session.add(NodeEvent(node_id=node_id, at=at, kind=LOG_EVENT_KIND,
                              message=re.sub(r"\s+", " ", f"{severity}: {labels.get('message', '')}{code}")[:2000],
                              actor=LOG_ACTOR))
        newest[labels["log"]] = labels
    for log, labels in newest.items():
        cursor = session.get(BmcLogCursor, (node_id, log)) or BmcLogCursor(node_id=node_id, log=log, entry="")
        cursor.entry, cursor.created = labels["id"][:255], labels.get("created", "")[:64]
        session.add(cursor)
    session.flush()
