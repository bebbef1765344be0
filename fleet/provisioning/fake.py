"""The fake driver: Ironic's state machine in memory, like Ironic's `fake-hardware`.

For the demo and unit tests. Transitions settle after `delay` seconds (0: at once). A node
tagged `fake-fail-<action>` (e.g. `fake-fail-deploy`) fails that action the way Ironic
would, ending in the matching failure state with `last_error` set. A new process resumes
a node from Kiln's last known view of it (`NodeTarget.known`). `on_power(name, state)` is
called whenever a node's power settles on a new state, as Ironic's power interface would
switch the server through its BMC (`kiln demo` switches its simulated BMCs this way).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from fleet.provisioning.actions import TRANSITIONS, Action
from fleet.provisioning.base import BackendNode, DriverError, Image, NodeTarget
from fleet.provisioning.states import PowerRequest, PowerState, ProvisionState

S = ProvisionState
VERB_ACTIONS = {t.ironic_verb: action for action, t in TRANSITIONS.items() if t.ironic_verb}
# verb -> (state while working, state on failure)
WORKING = {
    "manage": (S.VERIFYING, S.ENROLL),
    "inspect": (S.INSPECTING, S.INSPECT_FAILED),
    "provide": (S.CLEANING, S.CLEAN_FAILED),
    "active": (S.DEPLOYING, S.DEPLOY_FAILED),
    "rebuild": (S.DEPLOYING, S.DEPLOY_FAILED),
    "deleted": (S.DELETING, S.ERROR),
}
ABORTED = {S.CLEAN_WAIT: S.CLEAN_FAILED, S.INSPECT_WAIT: S.INSPECT_FAILED, S.DEPLOY_WAIT: S.DEPLOY_FAILED}


@dataclass
class _Pending:
    final: BackendNode
    due: float


class FakeDriver:
    """An in-memory backend with Ironic's states and error messages."""

    name = "fake"
    transitions = TRANSITIONS

    def __init__(self, delay: float = 0.0, on_power: Callable[[str, PowerState], None] | None = None):
        self.delay = delay
        self.on_power = on_power
        self._nodes: dict[str, BackendNode] = {}
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()

    def enroll(self, node: NodeTarget) -> BackendNode:
        """Register the node in `enroll`, powered off."""
        external_id = f"fake-{uuid.uuid4()}"
        with self._lock:
            self._nodes[external_id] = BackendNode(external_id, S.ENROLL, PowerState.OFF, name=node.name)
            return self._nodes[external_id]

    def remove(self, node: NodeTarget) -> None:
        """Forget the node; refuses an active one, as Ironic does."""
        with self._lock:
            current = self._current(node)
            if current.provision_state == S.ACTIVE and not current.maintenance:
                raise DriverError(f'Node {node.name} can not be deleted while it is in state "active"', 409)
            self._nodes.pop(current.external_id, None)

    def get(self, node: NodeTarget) -> BackendNode:
        """The node's state, with any transition that is due applied."""
        with self._lock:
            return self._current(node)

    def list_all(self) -> list[BackendNode]:
        """Every node this process knows."""
        with self._lock:
            return [self._settle(external_id) for external_id in list(self._nodes)]

    def set_provision_state(self, node: NodeTarget, verb: str, image: Image | None = None) -> None:
        """Start a transition; illegal ones fail with Ironic's message."""
        with self._lock:
            current = self._current(node)
            action = VERB_ACTIONS.get(verb)
            if action is None or current.provision_state not in TRANSITIONS[action].sources:
                raise DriverError(
                    f'The requested action "{verb}" can not be performed on node "{node.name}" '
                    f'while it is in state "{current.provision_state}".',
                    400,
                )
            if action in {Action.DEPLOY, Action.REBUILD} and image is None:
                raise DriverError(f"Cannot deploy node {node.name}: instance_info is missing image_source", 400)
            if verb == "abort":
                final = replace(current, provision_state=ABORTED.get(current.provision_state, S.ERROR), target_provision_state=None)
                self._nodes[current.external_id] = final
                return
            working, failed = WORKING[verb]
            settles = TRANSITIONS[action].settles_in
            if f"fake-fail-{action.value}" in node.tags:
                final = replace(current, provision_state=failed, target_provision_state=None,
                                last_error=f"fake driver: {action.value} failed as the node's tag asked")
            else:
                final = replace(current, provision_state=settles, target_provision_state=None, last_error=None)
            if action == Action.DEPLOY or action == Action.REBUILD:
                final = replace(final, power_state=PowerState.ON if final.provision_state == S.ACTIVE else final.power_state)
            self._start(current, replace(current, provision_state=working, target_provision_state=str(settles)), final)

    def set_power(self, node: NodeTarget, state: str) -> None:
        """Switch power at once (or after the delay)."""
        with self._lock:
            current = self._current(node)
            wanted = PowerState.OFF if state == PowerRequest.OFF else PowerState.ON
            working = replace(current, target_power_state=wanted.value)
            self._start(current, working, replace(current, power_state=wanted, target_power_state=None))

    def set_maintenance(self, node: NodeTarget, on: bool, reason: str | None = None) -> None:
        """Set or clear maintenance."""
        with self._lock:
            current = self._current(node)
            self._nodes[current.external_id] = replace(current, maintenance=on, maintenance_reason=reason if on else None)

    def _start(self, current: BackendNode, working: BackendNode, final: BackendNode) -> None:
        if self.delay <= 0:
            self._settled(current, final)
            return
        self._nodes[current.external_id] = working
        self._pending[current.external_id] = _Pending(final, time.monotonic() + self.delay)

    def _current(self, node: NodeTarget) -> BackendNode:
        external_id = node.external_id or ""
        if external_id not in self._nodes:
            if node.known is None:
                raise DriverError(f"node {node.name} is not enrolled with the fake driver", 404)
            self._nodes[external_id] = replace(node.known, external_id=external_id, name=node.name)
        return self._settle(external_id)

    def _settle(self, external_id: str) -> BackendNode:
        pending = self._pending.get(external_id)
        if pending and pending.due <= time.monotonic():
            del self._pending[external_id]
            self._settled(self._nodes[external_id], pending.final)
        return self._nodes[external_id]

    def _settled(self, before: BackendNode, final: BackendNode) -> None:
        self._nodes[final.external_id] = final
        if self.on_power and final.power_state != before.power_state and final.power_state and final.name:
            self.on_power(final.name, final.power_state)
