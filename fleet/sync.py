"""The periodic sync: pull provision and power state from each driver so Kiln's view converges.

One listing per provisioner per run (not one request per node). A change made behind
Kiln's back (someone used the `baremetal` CLI) becomes a `state` event on the node.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet.models import Node
from fleet.nodes import add_event, apply_backend_state
from fleet.provisioning.base import DriverError
from fleet.provisioning.registry import Drivers
from kiln.errors import KilnError
from kiln.security import SecretBox

SYNC_ACTOR = "sync"


@dataclass
class SyncReport:
    """What one sync run saw."""

    checked: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        text = f"checked {self.checked} node(s), {len(self.changed)} changed, {len(self.missing)} missing from their backend"
        for provisioner, error in sorted(self.errors.items()):
            text += f"; {provisioner}: {error}"
        return text


def sync_nodes(engine: Engine, drivers: Drivers, box: SecretBox) -> SyncReport:
    """Update every enrolled node's mirror from its backend; never raises for a backend failure."""
    report = SyncReport()
    with Session(engine, expire_on_commit=False) as session:
        by_provisioner: dict[str, list[Node]] = defaultdict(list)
        for node in session.exec(select(Node).where(col(Node.external_id).is_not(None))).all():
            by_provisioner[node.provisioner].append(node)
        for provisioner, nodes in sorted(by_provisioner.items()):
            try:
                listed = {b.external_id: b for b in drivers.get(provisioner).list_all()}
            except (DriverError, KilnError) as exc:
                report.errors[provisioner] = str(exc)
                continue
            for node in nodes:
                report.checked += 1
                backend = listed.get(node.external_id)
                if backend is None:
                    if provisioner != "fake":  # the fake backend only knows this process's nodes
                        _mark_missing(session, node, provisioner, report)
                    continue
                before = (node.provision_state, node.power_state, node.maintenance)
                if apply_backend_state(node, backend):
                    after = (node.provision_state, node.power_state, node.maintenance)
                    if after != before:
                        add_event(session, node, "state", _describe(before, after), SYNC_ACTOR)
                        report.changed.append(node.name)
                session.add(node)
        session.commit()
    return report


def _describe(before: tuple, after: tuple) -> str:
    labels = ("provision state", "power", "maintenance")
    parts = [f"{label} {old} → {new}" for label, old, new in zip(labels, before, after, strict=True) if old != new]
    return "changed outside Kiln: " + ", ".join(parts)


def _mark_missing(session: Session, node: Node, provisioner: str, report: SyncReport) -> None:
    message = f"node no longer exists in {provisioner} (external id {node.external_id})"
    report.missing.append(node.name)
    if node.last_error != message:
        node.last_error = message
        add_event(session, node, "error", message, SYNC_ACTOR)
        session.add(node)
