"""Firmware compliance: which nodes run which firmware against their baseline (fleet/firmware.py).

A node's baseline is its resource class's entries, plus the entries of `gpu:<model>` for each GPU
model the node has, for components its class does not set (the class wins; between two GPU models
the first by name wins). For every baseline component, each inventory entry of the node that it
names (by kind, `bmc`/`bios`/`gpu`/`nic`, or by exact Redfish Id; see
collectors/redfish_firmware.py) is one row, with a status:

| status | when |
| --- | --- |
| `ok` | the versions are equal (numerically for dotted numbers: `1.2` = `1.2.0`) |
| `behind` / `ahead` | both are dotted numbers (digits and dots, a leading `v` allowed: `2.4.1`, `v1.10`) and the actual is lower / higher |
| `different` | the versions differ and are not both dotted numbers: no order is guessed |
| `missing` | the node's inventory was read but has no such component |
| `unknown` | the node's firmware was never read (no Redfish inventory yet), or the component reports no version |

Who sees what follows node listing (fleet/nodes.py `visible`): global roles every node, tenant
roles the nodes leased to their tenants.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from sqlmodel import Session, select

from fleet.firmware import GPU_SCOPE
from fleet.models import FirmwareBaseline, Gpu, Node
from fleet.nodes import visible
from kiln.auth import Principal
from kiln.spreadsheet import spreadsheet_text

OK, BEHIND, AHEAD, DIFFERENT, MISSING, UNKNOWN = "ok", "behind", "ahead", "different", "missing", "unknown"
STATUSES = (OK, BEHIND, AHEAD, DIFFERENT, MISSING, UNKNOWN)
DOTTED = re.compile(r"^v?(\d+(?:\.\d+)*)$", re.IGNORECASE)
CSV_COLUMNS = ("node", "resource_class", "baseline", "component", "firmware_id", "expected", "actual", "status", "read_at")


class ComplianceRow(BaseModel):
    """One node component against its baseline."""

    node: str
    resource_class: str | None
    baseline: str  # the baseline's resource class, or gpu:<model>
    component: str  # as the baseline names it
    firmware_id: str | None  # the Redfish Id of the inventory entry; None when missing/unknown
    expected: str
    actual: str | None
    status: str
    read_at: str | None  # when the node's inventory was read


def compare_versions(expected: str, actual: str | None) -> str:
    """`ok`, `behind`, `ahead`, `different`, or `unknown` (no actual version)."""
    if not actual or not actual.strip():
        return UNKNOWN
    want, have = DOTTED.match(expected.strip()), DOTTED.match(actual.strip())
    if want and have:
        a, b = _numbers(want.group(1)), _numbers(have.group(1))
        width = max(len(a), len(b))
        a, b = a + (0,) * (width - len(a)), b + (0,) * (width - len(b))
        return OK if a == b else BEHIND if b < a else AHEAD
    return OK if expected.strip() == actual.strip() else DIFFERENT


def _numbers(dotted: str) -> tuple[int, ...]:
    return tuple(int(part) for part in dotted.split("."))


def node_baseline(resource_class: str | None, gpu_models: Iterable[str],
                  baselines: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[str, str]]:
    """component → (expected version, baseline scope) for a node, from `baselines` scope → {component: version}."""
    found: dict[str, tuple[str, str]] = {}
    for scope in [resource_class] + [GPU_SCOPE + model for model in sorted(set(gpu_models))]:
        for component, version in (baselines.get(scope or "") or {}).items():
            found.setdefault(component, (version, scope))
    return found


def node_rows(node: Node, gpu_models: Iterable[str], baselines: Mapping[str, Mapping[str, str]]) -> list[ComplianceRow]:
    """The compliance rows of one node (none when no baseline applies to it)."""
    firmware = node.facts.get("firmware") if isinstance(node.facts, dict) else None
    components: dict[str, dict[str, Any]] = (firmware or {}).get("components") or {}
    read_at = (firmware or {}).get("read_at")
    rows = []
    for component, (expected, scope) in sorted(node_baseline(node.resource_class, gpu_models, baselines).items()):
        base = {"node": node.name, "resource_class": node.resource_class, "baseline": scope, "component": component,
                "expected": expected, "read_at": read_at}
        matches = {fid: entry for fid, entry in components.items()
                   if fid == component or entry.get("component") == component}
        if not matches:
            rows.append(ComplianceRow(**base, firmware_id=None, actual=None, status=MISSING if firmware else UNKNOWN))
            continue
        for fid, entry in sorted(matches.items()):
            actual = entry.get("version") or None
            rows.append(ComplianceRow(**base, firmware_id=fid, actual=actual, status=compare_versions(expected, actual)))
    return rows


def compliance(session: Session, principal: Principal, *, statuses: Sequence[str] = (),
               node: str | None = None) -> list[ComplianceRow]:
    """Every visible node's components against its baseline, by node; only `statuses` when given."""
    baselines: dict[str, dict[str, str]] = {}
    for entry in session.exec(select(FirmwareBaseline)):
        baselines.setdefault(entry.scope, {})[entry.component] = entry.version
    if not baselines:
        return []
    statement = visible(select(Node).order_by(Node.name), principal)
    if node:
        statement = statement.where(Node.name == node)
    nodes = list(session.exec(statement))
    models: dict[int, set[str]] = {}
    for node_id, model in session.exec(select(Gpu.node_id, Gpu.model).where(Gpu.node_id.in_([n.id for n in nodes]))):
        models.setdefault(node_id, set()).add(model)
    rows = [row for n in nodes for row in node_rows(n, models.get(n.id, ()), baselines)]
    return [row for row in rows if row.status in statuses] if statuses else rows


def compliance_csv(rows: Iterable[ComplianceRow]) -> str:
    """Rows as CSV with a header (`CSV_COLUMNS`); empty cells for absent values, text a spreadsheet
    would run as a formula quoted (versions come from BMCs)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        data = row.model_dump()
        writer.writerow(["" if data[c] is None else spreadsheet_text(str(data[c])) for c in CSV_COLUMNS])
    return out.getvalue()
