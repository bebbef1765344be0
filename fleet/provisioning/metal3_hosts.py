"""BareMetalHost objects seen as Kiln nodes: Metal3's states mapped onto Ironic's (Kiln's only
states), Kiln's action table as Metal3 has it, and the BMC addresses and image specs BMO accepts.
Used by `fleet.provisioning.metal3.Metal3Driver`; pure functions, no API calls.

State mapping, from BMO's `ProvisioningState` constants and docs/baremetalhost-states.md
(metal3-io/baremetal-operator, apis/metal3.io/v1alpha1/baremetalhost_types.go):

    status.provisioning.state    Kiln state           when operationalStatus is "error"
    ---------------------------  -------------------  ---------------------------------
    "" (no status), unmanaged    enroll               enroll
    registering                  verifying            enroll (Ironic's failed verify)
    inspecting                   inspecting           inspect failed
    match profile, preparing     cleaning             clean failed
    ready, available             available            available
    provisioning                 deploying            deploy failed
    provisioned                  active               active
    externally provisioned       active               active
    deprovisioning               deleting             error (Ironic's failed tear-down)
    powering off before delete,
    deleting                     deleting             deleting
    any other (newer BMO)        error, last_error names the unknown state

- operationalStatus "error": `last_error` = status.errorMessage (or errorType).
  errorType "power management error" is not a provisioning failure (BMO keeps the host's
  state): the state follows the first column and `power_state` is `error`.
- operationalStatus "servicing" on a provisioned host: servicing (error: service failed).
- operationalStatus "detached" (annotation `baremetalhost.metal3.io/detached`): BMO has
  removed the host from its Ironic and no longer acts on it, but the machine keeps running
  its image. That is Ironic's maintenance (the conductor leaves the node alone), not a
  provision state: the state follows the first column and `maintenance` is true.
  (Mapping it to manageable would lose the fact that the host is deployed.)
- metadata.deletionTimestamp set (BMO's finalizer is deprovisioning): deleting.
- A request BMO has not picked up yet reads as Ironic reports an accepted request, so
  polling never mistakes it for a settled node: spec.image set on an available host is
  deploying; spec.image removed from a provisioned host is deleting; the inspect annotation
  on an available host is inspecting.
- `target_provision_state` is set while transient: active while deploying (and while
  verifying/inspecting/cleaning with spec.image set), else available; "deleted" while the
  BareMetalHost itself is being deleted. `power_state` comes from status.poweredOn (None
  with no status); `maintenance` is the `baremetalhost.metal3.io/paused` annotation (its
  value is the reason) or detachment.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from fleet.provisioning.actions import TRANSITIONS, Action, Transition
from fleet.provisioning.base import BackendNode, DriverError, Image, NodeTarget
from fleet.provisioning.states import TRANSIENT_STATES, PowerRequest, PowerState, ProvisionState
from kiln.validation import is_ip_address

S = ProvisionState

PAUSED_ANNOTATION = "baremetalhost.metal3.io/paused"
DETACHED_ANNOTATION = "baremetalhost.metal3.io/detached"
INSPECT_ANNOTATION = "inspect.metal3.io"
DEFAULT_PAUSE_REASON = "kiln"
DELETED_TARGET = "deleted"

# status.provisioning.state -> (Kiln state, Kiln state when operationalStatus is "error")
BMH_STATES: dict[str, tuple[ProvisionState, ProvisionState]] = {
    "": (S.ENROLL, S.ENROLL),
    "unmanaged": (S.ENROLL, S.ENROLL),
    "registering": (S.VERIFYING, S.ENROLL),
    "inspecting": (S.INSPECTING, S.INSPECT_FAILED),
    "match profile": (S.CLEANING, S.CLEAN_FAILED),
    "preparing": (S.CLEANING, S.CLEAN_FAILED),
    "ready": (S.AVAILABLE, S.AVAILABLE),
    "available": (S.AVAILABLE, S.AVAILABLE),
    "provisioning": (S.DEPLOYING, S.DEPLOY_FAILED),
    "provisioned": (S.ACTIVE, S.ACTIVE),
    "externally provisioned": (S.ACTIVE, S.ACTIVE),
    "deprovisioning": (S.DELETING, S.ERROR),
    "powering off before delete": (S.DELETING, S.DELETING),
    "deleting": (S.DELETING, S.DELETING),
}
POWER_MANAGEMENT_ERROR = "power management error"

# BMC URL schemes BMO accepts for the IPMI and Redfish hardware Kiln enrolls
# (pkg/hardwareutils/bmc: ipmi.go, redfish*.go; "+http"/"+https" pick the transport).
BMC_SCHEMES = frozenset(
    {"ipmi", "libvirt"}
    | {f"{base}{suffix}" for base in ("redfish", "redfish-virtualmedia", "idrac-redfish", "idrac-virtualmedia",
                                      "ilo5-redfish") for suffix in ("", "+http", "+https")}
)
_DNS_NAME = re.compile(r"^(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]{0,61}[a-zA-Z0-9])\.)*"
                       r"([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]{0,61}[A-Za-z0-9])$")
_HEX_CHECKSUM_TYPES = {32: "md5", 64: "sha256", 128: "sha512"}

# States at or past "manage" / "provide": Metal3 has done what they ask (they are no-ops there).
_MANAGED = frozenset(S) - {S.ENROLL}
_PROVIDED = frozenset(
    {S.AVAILABLE, S.DEPLOYING, S.DEPLOY_WAIT, S.DEPLOY_HOLD, S.DEPLOY_FAILED, S.ACTIVE, S.DELETING, S.ERROR,
     S.SERVICING, S.SERVICE_WAIT, S.SERVICE_HOLD, S.SERVICE_FAILED}
)
# Kiln's action table as Metal3 has it: no resting manageable state (hosts rest in available,
# and BMO re-inspects an available host, which settles back in available); manage and provide
# happen by themselves; no rebuild, no abort.
METAL3_TRANSITIONS: dict[Action, Transition] = {
    **TRANSITIONS,
    Action.MANAGE: Transition(_MANAGED, None, "manage"),
    Action.PROVIDE: Transition(_PROVIDED, None, "provide"),
    Action.INSPECT: Transition(TRANSITIONS[Action.INSPECT].sources | {S.AVAILABLE}, S.AVAILABLE, "inspect"),
    Action.REBUILD: Transition(frozenset(), S.ACTIVE, "rebuild"),
    Action.ABORT: Transition(frozenset(), None, "abort"),
}
VERBS = {t.ironic_verb: action for action, t in METAL3_TRANSITIONS.items() if t.ironic_verb}
# Deleting a BareMetalHost in these states makes BMO deprovision (and clean) the machine.
PROVISIONED = frozenset({S.ACTIVE, S.DEPLOYING, S.DEPLOY_FAILED, S.SERVICING, S.SERVICE_FAILED})



def backend_node(bmh: dict[str, Any]) -> BackendNode:
    """Map a BareMetalHost object (as the API returns it) onto Kiln's view of a node."""
    metadata, spec = bmh.get("metadata") or {}, bmh.get("spec") or {}
    status = bmh.get("status") or {}
    annotations = metadata.get("annotations") or {}
    operational = status.get("operationalStatus", "")
    failed = operational == "error"
    power_fault = failed and status.get("errorType") == POWER_MANAGEMENT_ERROR
    detached = DETACHED_ANNOTATION in annotations or operational == "detached"
    being_deleted = bool(metadata.get("deletionTimestamp"))
    has_image = bool((spec.get("image") or {}).get("url"))

    state, last_error = _provision_state(status, failed and not power_fault)
    if failed and last_error is None:
        last_error = status.get("errorMessage") or status.get("errorType") or "unknown error"
    if being_deleted:
        state = S.DELETING
    elif not failed and not detached:
        state = _with_pending_request(state, status, has_image, annotations)

    powered = status.get("poweredOn")
    if power_fault:
        power: PowerState | None = PowerState.ERROR
    else:
        power = None if powered is None else PowerState.ON if powered else PowerState.OFF
    paused = annotations.get(PAUSED_ANNOTATION)
    if paused is not None:
        reason = paused if paused not in ("", DEFAULT_PAUSE_REASON) else None
    else:
        reason = "detached from Metal3 (baremetalhost.metal3.io/detached)" if detached else None
    return BackendNode(
        external_id=metadata.get("name", ""),
        provision_state=state,
        power_state=power,
        target_provision_state=_target(state, has_image, being_deleted),
        target_power_state=_power_target(spec.get("online"), powered, power_fault),
        maintenance=paused is not None or detached,
        maintenance_reason=reason,
        last_error=last_error,
    )


def _power_target(online: bool | None, powered: bool | None, fault: bool) -> str | None:
    """The power state Metal3 is still driving the host to (spec.online not yet reached)."""
    if fault or online is None or powered is None or bool(online) == bool(powered):
        return None
    return PowerRequest.ON.value if online else PowerRequest.OFF.value


def _provision_state(status: dict[str, Any], failed: bool) -> tuple[ProvisionState, str | None]:
    """The state BMO reports, through BMH_STATES; an unknown one is an error that names it."""
    bmh_state = (status.get("provisioning") or {}).get("state", "")
    if bmh_state not in BMH_STATES:
        return S.ERROR, f'unknown BareMetalHost provisioning state "{bmh_state}"'
    ok_state, failed_state = BMH_STATES[bmh_state]
    if ok_state == S.ACTIVE and status.get("operationalStatus") == "servicing":
        return S.SERVICING, None
    if ok_state == S.ACTIVE and failed and status.get("errorType") == "servicing error":
        return S.SERVICE_FAILED, None
    return (failed_state if failed else ok_state), None


def _with_pending_request(
    state: ProvisionState, status: dict[str, Any], has_image: bool, annotations: dict[str, str]
) -> ProvisionState:
    """A spec change BMO has not acted on yet reads as the transition it asks for, like Ironic."""
    bmh_state = (status.get("provisioning") or {}).get("state", "")
    if state == S.AVAILABLE and has_image:
        return S.DEPLOYING
    if bmh_state == "provisioned" and not has_image:
        return S.DELETING
    if state == S.AVAILABLE and annotations.get(INSPECT_ANNOTATION, "disabled") != "disabled":
        return S.INSPECTING
    return state


def _target(state: ProvisionState, has_image: bool, being_deleted: bool) -> str | None:
    if being_deleted:
        return DELETED_TARGET
    if state not in TRANSIENT_STATES:
        return None
    if state in {S.DEPLOYING, S.SERVICING}:
        return S.ACTIVE.value
    if state == S.DELETING:
        return S.AVAILABLE.value
    return (S.ACTIVE if has_image else S.AVAILABLE).value


def bmc_address(node: NodeTarget) -> str:
    """The BMC address for spec.bmc.address: the node's, with its driver's scheme if it has none.

    Raises DriverError(400) for an address BMO would reject (unknown scheme, bad hostname).
    """
    address = node.bmc_address.strip()
    if "://" not in address:
        address = f"{node.bmc_driver}://{address}"
    parts = urlsplit(address)
    if parts.scheme not in BMC_SCHEMES:
        raise DriverError(
            f'Metal3 does not support BMC address "{node.bmc_address}" of node "{node.name}": '
            f"scheme must be one of {', '.join(sorted(BMC_SCHEMES))}",
            400,
        )
    try:
        host, _ = parts.hostname or "", parts.port  # .port raises ValueError for a bad port
    except ValueError as exc:
        raise DriverError(f'invalid BMC address "{node.bmc_address}" of node "{node.name}": {exc}', 400) from exc
    if not host or not (is_ip_address(host) or _DNS_NAME.match(host)):
        raise DriverError(f'invalid BMC host in "{node.bmc_address}" of node "{node.name}"', 400)
    return address


def image_spec(image: Image) -> dict[str, str]:
    """spec.image for an Image: checksum `sha256:<hex>` / `md5:<hex>` / bare hex / URL of a checksum file."""
    checksum = image.checksum.strip()
    if urlsplit(checksum).scheme in {"http", "https", "file"}:
        return {"url": image.url, "checksum": checksum, "checksumType": "auto"}
    algorithm, _, value = checksum.rpartition(":")
    algorithm = algorithm.lower() or _HEX_CHECKSUM_TYPES.get(len(value), "")
    if algorithm not in _HEX_CHECKSUM_TYPES.values() or not re.fullmatch(r"[0-9a-fA-F]+", value):
        raise DriverError(
            f'unsupported image checksum "{image.checksum}": Metal3 takes md5, sha256 or sha512 '
            "(`sha256:<hex>`) or the URL of a checksum file",
            400,
        )
    return {"url": image.url, "checksum": value.lower(), "checksumType": algorithm}
