"""Tracked operations: plan an action on nodes, run it through the driver, wait, record.

Planning happens in the caller's transaction (one `operation` row per node, `pending`).
Running happens outside it, one node per worker thread with short transactions of its
own, so a bulk action over hundreds of nodes never holds a database lock while Ironic
works. One failing node never stops the others; every outcome is recorded on the
operation and in the node's event history.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet.models import Node, Operation
from fleet.nodes import add_event, apply_backend_state, node_target, tags_of
from fleet.provisioning.actions import (
    MAINTENANCE_ACTIONS,
    POWER_ACTIONS,
    Action,
    Transition,
    is_failure,
    is_settled,
)
from fleet.provisioning.base import BackendNode, DriverError, Image, NodeTarget, ProvisioningDriver
from fleet.provisioning.registry import Drivers
from fleet.provisioning.states import PowerRequest, PowerState
from kiln import audit
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.errors import KilnError, ValidationFailed
from kiln.roles import Role
from kiln.logs import log_context
from kiln.security import SecretBox
from kiln.telemetry import in_this_context, mark_failed, span

log = logging.getLogger(__name__)

POWER_REQUESTS = {Action.POWER_ON: PowerRequest.ON, Action.POWER_OFF: PowerRequest.OFF, Action.REBOOT: PowerRequest.REBOOT}
POWER_RESULTS = {Action.POWER_ON: PowerState.ON, Action.POWER_OFF: PowerState.OFF, Action.REBOOT: PowerState.ON}


class OpStatus(StrEnum):
    """Life of an operation."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ActionParams(BaseModel):
    """Parameters some actions need: an image to deploy, a reason for maintenance."""

    image_url: str | None = None
    image_checksum: str | None = None
    config_drive: str | None = None
    reason: str | None = None

    def image(self) -> Image | None:
        """The image to deploy, when one was given."""
        if self.image_url and self.image_checksum:
            return Image(self.image_url, self.image_checksum, self.config_drive)
        return None


class OperationPublic(BaseModel):
    """An operation as the API and CLI report it."""

    id: int
    node_id: int
    node: str
    bulk_id: str | None
    action: str
    requested_by: str
    status: OpStatus
    created_at: object
    started_at: object | None
    finished_at: object | None
    result_state: str | None
    error: str | None


def plan_action(
    session: Session, principal: Principal, nodes: list[Node], action: Action, params: ActionParams
) -> list[Operation]:
    """Record a pending operation per node (infra-admin only); run them with `OperationRunner`."""
    principal.require_role(Role.INFRA_ADMIN, action=f"{action.value} nodes")
    if action in {Action.DEPLOY, Action.REBUILD} and params.image() is None:
        field = "image_checksum" if params.image_url else "image_url"
        raise ValidationFailed(field, f"{action.value} needs --image-url and --image-checksum")
    bulk_id = str(uuid.uuid4()) if len(nodes) > 1 else None
    operations = []
    for node in nodes:
        operation = Operation(
            node_id=node.id,
            bulk_id=bulk_id,
            action=action.value,
            requested_by=principal.username,
            status=OpStatus.PENDING.value,
            params=params.model_dump(exclude_none=True, exclude={"config_drive"}),
        )
        session.add(operation)
        operations.append(operation)
    session.flush()
    for node, operation in zip(nodes, operations, strict=True):
        audit.record(session, principal, action.value, "node", node.id, detail={"operation": operation.id})
    return operations


def to_public(session: Session, operations: Iterable[Operation]) -> list[OperationPublic]:
    """Operations with their node names."""
    operations = list(operations)
    names = dict(session.exec(select(Node.id, Node.name).where(col(Node.id).in_([o.node_id for o in operations]))).all())
    return [OperationPublic(**o.model_dump(exclude={"params"}), node=names.get(o.node_id, "?")) for o in operations]


@dataclass(frozen=True)
class Outcome:
    """How one operation ended."""

    operation_id: int
    node: str
    action: str
    ok: bool
    state: str | None
    error: str | None
    seconds: float


class OperationRunner:
    """Runs planned operations against the drivers and records what happened."""

    def __init__(self, engine: Engine, drivers: Drivers, box: SecretBox, *, timeout: float = 3600, poll_max: float = 2.0):
        self.engine, self.drivers, self.box = engine, drivers, box
        self.timeout, self.poll_max = timeout, poll_max

    def run_many(
        self, operation_ids: list[int], concurrency: int, on_done: Callable[[Outcome], None] | None = None
    ) -> list[Outcome]:
        """Run operations at most `concurrency` at a time; report each as it finishes."""
        outcomes = []
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(operation_ids) or 1))) as pool:
            futures = [pool.submit(in_this_context(self.run), op_id) for op_id in operation_ids]
            for future in as_completed(futures):
                outcome = future.result()
                outcomes.append(outcome)
                if on_done:
                    on_done(outcome)
        return sorted(outcomes, key=lambda o: o.node)

    def run(self, operation_id: int) -> Outcome:
        """Run one operation to its end (success, failure or timeout); never raises. Its log lines
        name the node; tracing on, it is a `kiln.provision.<action>` span."""
        started = time.monotonic()
        with Session(self.engine, expire_on_commit=False) as session:
            operation = session.get(Operation, operation_id)
            node = session.get(Node, operation.node_id)
            target = node_target(node, self.box, tags_of(session, [node.id]).get(node.id, []))
            operation.status, operation.started_at = OpStatus.RUNNING.value, utcnow()
            session.add(operation)
            session.commit()
        attributes = {"kiln.node": node.name, "kiln.provisioner": node.provisioner, "kiln.operation_id": operation_id}
        with log_context(node=node.name), span(f"kiln.provision.{operation.action}", attributes) as current:
            outcome = self._run(operation, node, target, started)
            current.set_attribute("kiln.ok", outcome.ok)
            current.set_attribute("kiln.provision_state", outcome.state or "")
            if outcome.error:
                mark_failed(current, outcome.error)
        return outcome

    def _run(self, operation: Operation, node: Node, target: NodeTarget, started: float) -> Outcome:
        operation_id = operation.id
        action = Action(operation.action)
        backend: BackendNode | None = None
        driver: ProvisioningDriver | None = None
        error: str | None = None
        try:
            driver = self.drivers.get(node.provisioner)
            backend = self._execute(driver, target, action, ActionParams(**operation.params))
            error = self._failure(driver.transitions[action], action, backend)
        except DriverError as exc:
            error = str(exc)
            backend = self._refresh(driver, target)
        except KilnError as exc:  # e.g. the node's provisioner is not configured in this process
            error = exc.detail
        except Exception as exc:  # the outermost job runner: record, log the traceback, carry on
            log.exception("operation %s (%s on %s) crashed", operation_id, action.value, node.name)
            error = f"internal error: {type(exc).__name__}: {exc}"
        return self._finish(operation_id, backend, error, started)

    @staticmethod
    def _refresh(driver: ProvisioningDriver | None, target: NodeTarget) -> BackendNode | None:
        """The node's state after a refused or failed request (it may say why: maintenance, last_error)."""
        if driver is None:
            return None
        try:
            return driver.get(target)
        except DriverError:
            return None

    def _execute(self, driver: ProvisioningDriver, target: NodeTarget, action: Action, params: ActionParams) -> BackendNode:
        transition = driver.transitions[action]
        # Kiln's mirror (written by the last operation or sync) is enough to go ahead: the backend
        # checks the request again itself, and a GET per node would only load it (Ironic is the
        # bottleneck of a bulk action). A refusal is confirmed first, as the mirror may be stale.
        current = target.known
        if current is None or current.provision_state not in transition.sources:
            current = driver.get(target)
        if current.provision_state not in transition.sources:
            legal = ", ".join(sorted(s.value for s in transition.sources)) or "none: this backend cannot do it"
            raise DriverError(
                f'{action.value} is not possible while the node is in state "{current.provision_state}" (needs: {legal})',
                400,
            )
        if action in POWER_ACTIONS:
            driver.set_power(target, POWER_REQUESTS[action])
        elif action in MAINTENANCE_ACTIONS:
            driver.set_maintenance(target, action == Action.MAINTENANCE_ON, params.reason)
            return driver.get(target)
        else:
            image = params.image() if action in {Action.DEPLOY, Action.REBUILD} else None
            driver.set_provision_state(target, transition.ironic_verb, image)
        return self._wait(driver, target, action)

    def _wait(self, driver: ProvisioningDriver, target: NodeTarget, action: Action) -> BackendNode:
        deadline = time.monotonic() + self.timeout
        interval = 0.05
        while True:
            backend = driver.get(target)
            if action in POWER_ACTIONS:
                if backend.power_state == POWER_RESULTS[action] and not backend.target_power_state:
                    return backend
                if not backend.target_power_state and backend.last_error:
                    raise DriverError(backend.last_error, 502)  # the backend gave up (e.g. BMC refused)
            elif is_settled(backend.provision_state, backend.target_provision_state):
                return backend
            if time.monotonic() > deadline:
                raise DriverError(f"timed out after {self.timeout:.0f} s in state \"{backend.provision_state}\"", 504)
            time.sleep(interval)
            interval = min(interval * 1.5, self.poll_max)

    @staticmethod
    def _failure(transition: Transition, action: Action, backend: BackendNode) -> str | None:
        expected = transition.settles_in
        if action in POWER_ACTIONS or action in MAINTENANCE_ACTIONS:
            return None
        if expected is not None and backend.provision_state == expected:
            return None
        if expected is None and not is_failure(backend.provision_state):
            return None
        return backend.last_error or f'ended in state "{backend.provision_state}"'

    def _finish(self, operation_id: int, backend: BackendNode | None, error: str | None, started: float) -> Outcome:
        with Session(self.engine, expire_on_commit=False) as session:
            operation = session.get(Operation, operation_id)
            node = session.get(Node, operation.node_id)
            if backend is not None:
                apply_backend_state(node, backend)
                session.add(node)
            operation.status = (OpStatus.FAILED if error else OpStatus.SUCCEEDED).value
            operation.finished_at = utcnow()
            operation.result_state = node.provision_state
            operation.error = error[:2000] if error else None
            session.add(operation)
            verdict = f"failed: {error}" if error else f"succeeded ({node.provision_state}, {node.power_state or 'power unknown'})"
            add_event(session, node, "action", f"{operation.action} {verdict}", operation.requested_by, operation.id)
            session.commit()
            return Outcome(operation.id, node.name, operation.action, not error, node.provision_state, error,
                           round(time.monotonic() - started, 3))
