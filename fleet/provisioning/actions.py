"""What a user can ask of a node, and in which provision states each request is legal.

A declarative table like Ironic's `common/state_machine.py`: Kiln refuses an illegal action
before calling the driver (a clear error naming the node and its state), and the driver's
backend (Ironic) remains the final authority.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fleet.provisioning.states import FAILED_STATES, TRANSIENT_STATES, ProvisionState

S = ProvisionState


class Action(StrEnum):
    """Actions of `kiln nodes action` and `POST /api/v1/nodes/{id}/actions`."""

    MANAGE = "manage"
    INSPECT = "inspect"
    PROVIDE = "provide"
    DEPLOY = "deploy"
    UNDEPLOY = "undeploy"
    REBUILD = "rebuild"
    ABORT = "abort"
    POWER_ON = "power-on"
    POWER_OFF = "power-off"
    REBOOT = "reboot"
    MAINTENANCE_ON = "maintenance-on"
    MAINTENANCE_OFF = "maintenance-off"


ALL_STATES = frozenset(ProvisionState)


@dataclass(frozen=True)
class Transition:
    """An action's legal source states and the stable state it settles in (None: unchanged)."""

    sources: frozenset[ProvisionState]
    settles_in: ProvisionState | None
    ironic_verb: str | None = None  # target of Ironic's PUT /v1/nodes/{id}/states/provision


TRANSITIONS: dict[Action, Transition] = {
    Action.MANAGE: Transition(
        frozenset({S.ENROLL, S.AVAILABLE, S.INSPECT_FAILED, S.CLEAN_FAILED, S.ADOPT_FAILED}), S.MANAGEABLE, "manage"
    ),
    Action.INSPECT: Transition(frozenset({S.MANAGEABLE, S.INSPECT_FAILED}), S.MANAGEABLE, "inspect"),
    Action.PROVIDE: Transition(frozenset({S.MANAGEABLE}), S.AVAILABLE, "provide"),
    Action.DEPLOY: Transition(frozenset({S.AVAILABLE, S.DEPLOY_FAILED}), S.ACTIVE, "active"),
    Action.UNDEPLOY: Transition(frozenset({S.ACTIVE, S.DEPLOY_FAILED, S.ERROR, S.DEPLOY_WAIT}), S.AVAILABLE, "deleted"),
    Action.REBUILD: Transition(frozenset({S.ACTIVE, S.DEPLOY_FAILED, S.ERROR}), S.ACTIVE, "rebuild"),
    Action.ABORT: Transition(
        frozenset({S.CLEAN_WAIT, S.INSPECT_WAIT, S.DEPLOY_WAIT, S.RESCUE_WAIT, S.SERVICE_WAIT}), None, "abort"
    ),
    Action.POWER_ON: Transition(ALL_STATES - TRANSIENT_STATES, None),
    Action.POWER_OFF: Transition(ALL_STATES - TRANSIENT_STATES, None),
    Action.REBOOT: Transition(ALL_STATES - TRANSIENT_STATES, None),
    Action.MAINTENANCE_ON: Transition(ALL_STATES, None),
    Action.MAINTENANCE_OFF: Transition(ALL_STATES, None),
}

PROVISION_ACTIONS = frozenset(a for a, t in TRANSITIONS.items() if t.ironic_verb)
POWER_ACTIONS = frozenset({Action.POWER_ON, Action.POWER_OFF, Action.REBOOT})
MAINTENANCE_ACTIONS = frozenset({Action.MAINTENANCE_ON, Action.MAINTENANCE_OFF})


def is_settled(state: ProvisionState, target: str | None) -> bool:
    """Whether the backend has finished working on a node (no target, not transient)."""
    return not target and state not in TRANSIENT_STATES


def is_failure(state: ProvisionState) -> bool:
    """Whether `state` is one of Ironic's failure states."""
    return state in FAILED_STATES
