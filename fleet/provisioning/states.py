"""Ironic's provision and power states, mirrored; and which action is legal in which state.

Kiln never invents states: every node's `provision_state` is one of Ironic's (the Metal3
driver maps BareMetalHost states onto these). No state string appears anywhere else in
Kiln's code; import the constants. Source: ironic/common/states.py and the state machine
documented at https://docs.openstack.org/ironic/latest/user/states.html.
"""

from __future__ import annotations

from enum import StrEnum


class ProvisionState(StrEnum):
    """Ironic provision states (the `provision_state` field of a node)."""

    ENROLL = "enroll"
    VERIFYING = "verifying"
    MANAGEABLE = "manageable"
    INSPECTING = "inspecting"
    INSPECT_WAIT = "inspect wait"
    INSPECT_FAILED = "inspect failed"
    CLEANING = "cleaning"
    CLEAN_WAIT = "clean wait"
    CLEAN_HOLD = "clean hold"
    CLEAN_FAILED = "clean failed"
    AVAILABLE = "available"
    DEPLOYING = "deploying"
    DEPLOY_WAIT = "wait call-back"
    DEPLOY_HOLD = "deploy hold"
    DEPLOY_FAILED = "deploy failed"
    ACTIVE = "active"
    DELETING = "deleting"
    ERROR = "error"
    REBUILD = "rebuild"
    ADOPTING = "adopting"
    ADOPT_FAILED = "adopt failed"
    RESCUE = "rescue"
    RESCUING = "rescuing"
    RESCUE_WAIT = "rescue wait"
    RESCUE_FAILED = "rescue failed"
    UNRESCUING = "unrescuing"
    UNRESCUE_FAILED = "unrescue failed"
    SERVICING = "servicing"
    SERVICE_WAIT = "service wait"
    SERVICE_HOLD = "service hold"
    SERVICE_FAILED = "service failed"


class PowerState(StrEnum):
    """Ironic power states (the `power_state` field); `None` in Ironic means unknown."""

    ON = "power on"
    OFF = "power off"
    ERROR = "error"


class PowerRequest(StrEnum):
    """What a driver's `set_power` is asked for (Ironic's `target` values)."""

    ON = "power on"
    OFF = "power off"
    REBOOT = "rebooting"


S = ProvisionState

# States in which Ironic is still working: the node is busy until it leaves them.
TRANSIENT_STATES = frozenset(
    {
        S.VERIFYING, S.INSPECTING, S.INSPECT_WAIT, S.CLEANING, S.CLEAN_WAIT, S.DEPLOYING,
        S.DEPLOY_WAIT, S.DELETING, S.REBUILD, S.ADOPTING, S.RESCUING, S.RESCUE_WAIT,
        S.UNRESCUING, S.SERVICING, S.SERVICE_WAIT,
    }
)
FAILED_STATES = frozenset(
    {S.INSPECT_FAILED, S.CLEAN_FAILED, S.DEPLOY_FAILED, S.ERROR, S.ADOPT_FAILED, S.RESCUE_FAILED,
     S.UNRESCUE_FAILED, S.SERVICE_FAILED}
)
