"""The Metal3 driver: Kiln's nodes as Metal3 `BareMetalHost`s, through the Kubernetes API.

Metal3's baremetal-operator (BMO) runs Ironic itself and drives each host from the
BareMetalHost's `spec` (what is wanted) to its `status` (what is). This driver writes the spec
(and a credentials Secret), and maps the status onto Ironic's states, Kiln's only states.
Needs the `kubernetes` client (Kiln's `k8s` extra).

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

Ironic verbs: "active" sets spec.image (+ spec.userData from `Image.config_drive`) and
spec.online; "deleted" removes spec.image; "inspect" sets the `inspect.metal3.io`
annotation; "manage" and "provide" happen automatically in Metal3 (a no-op once the host is
past that point, else a 400 saying so); "rebuild" and "abort" do not exist in Metal3 (400).
`METAL3_TRANSITIONS` (also `Metal3Driver.transitions`) is Kiln's action table as Metal3 has it.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from fleet.provisioning.actions import TRANSITIONS, Action, Transition
from fleet.provisioning.base import BackendNode, DriverError, Image, NodeTarget
from fleet.provisioning.states import PowerRequest, PowerState, ProvisionState, TRANSIENT_STATES

S = ProvisionState
T = TypeVar("T")

GROUP, VERSION, PLURAL = "metal3.io", "v1alpha1", "baremetalhosts"
MANAGED_LABEL = "kiln.io/managed"
HOST_LABEL = "kiln.io/host"
RESOURCE_CLASS_LABEL = "kiln.io/resource-class"
PAUSED_ANNOTATION = "baremetalhost.metal3.io/paused"
DETACHED_ANNOTATION = "baremetalhost.metal3.io/detached"
REBOOT_ANNOTATION = "reboot.metal3.io"
INSPECT_ANNOTATION = "inspect.metal3.io"
DEFAULT_PAUSE_REASON = "kiln"
DELETED_TARGET = "deleted"
MERGE_PATCH = "application/merge-patch+json"

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
_VERBS = {t.ironic_verb: action for action, t in METAL3_TRANSITIONS.items() if t.ironic_verb}
# Deleting a BareMetalHost in these states makes BMO deprovision (and clean) the machine.
_PROVISIONED = frozenset({S.ACTIVE, S.DEPLOYING, S.DEPLOY_FAILED, S.SERVICING, S.SERVICE_FAILED})
_API_STATUS = {400: 400, 404: 404, 409: 409, 410: 409, 422: 400}


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
    if not host or not (_is_ip(host) or _DNS_NAME.match(host)):
        raise DriverError(f'invalid BMC host in "{node.bmc_address}" of node "{node.name}"', 400)
    return address


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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


@dataclass(frozen=True)
class _Apis:
    custom: k8s.CustomObjectsApi
    core: k8s.CoreV1Api
    host: str


class Metal3Driver:
    """ProvisioningDriver over Metal3 BareMetalHosts in one namespace of a Kubernetes cluster."""

    name = "metal3"
    transitions = METAL3_TRANSITIONS  # which action is legal when, with this backend

    def __init__(
        self,
        kubeconfig: str | None = None,
        namespace: str = "metal3",
        *,
        api_client: k8s.ApiClient | None = None,
        timeout: float = 10.0,
    ):
        """`kubeconfig`: a file (None: in-cluster config, else $KUBECONFIG/~/.kube/config);
        `api_client` replaces both. Every request gives up after `timeout` seconds (connect: 3)."""
        self.namespace = namespace
        self.timeout = timeout
        self._kubeconfig = kubeconfig
        self._api_client = api_client
        self._apis_cache: _Apis | None = None
        self._namespace_ready = False

    # -- protocol -------------------------------------------------------------------------

    def enroll(self, node: NodeTarget) -> BackendNode:
        """Create the BMC credentials Secret and the BareMetalHost (offline); no orphan on failure."""
        address = bmc_address(node)
        if not node.bmc_username or not node.bmc_password:
            raise DriverError(f'Metal3 needs a BMC username and password for node "{node.name}"', 400)
        apis = self._apis()
        self._ensure_namespace(apis)
        if self._read(node.name, missing_ok=True) is not None:
            raise DriverError(f'BareMetalHost "{node.name}" already exists in namespace "{self.namespace}"', 409)
        secret = _secret_name(node.name)
        self._put_secret(secret, node.name, {"username": node.bmc_username, "password": node.bmc_password})
        labels = {MANAGED_LABEL: "true"}
        if node.resource_class:
            labels[RESOURCE_CLASS_LABEL] = node.resource_class
        spec: dict[str, Any] = {"online": False, "bmc": {"address": address, "credentialsName": secret}}
        if node.boot_mac:
            spec["bootMACAddress"] = node.boot_mac
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BareMetalHost",
            "metadata": {"name": node.name, "namespace": self.namespace, "labels": labels},
            "spec": spec,
        }
        try:
            created = self._call(
                apis.custom.create_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, body
            )
        except DriverError:
            self._delete_secret(secret, quiet=True)
            raise
        return backend_node(created)

    def remove(self, node: NodeTarget) -> None:
        """Delete the BareMetalHost and its Secrets (missing is fine).

        Refused (409) for a provisioned host that is not detached: deleting it would make BMO
        deprovision and clean the machine. Undeploy it first, or detach it.
        """
        name = self._host_name(node)
        bmh = self._read(name, missing_ok=True)
        if bmh is not None:
            current = backend_node(bmh)
            annotations = (bmh.get("metadata") or {}).get("annotations") or {}
            if current.provision_state in _PROVISIONED and DETACHED_ANNOTATION not in annotations:
                raise DriverError(
                    f'Node "{node.name}" can not be deleted while it is in state "{current.provision_state}": '
                    "Metal3 deprovisions a deleted host; undeploy it first, or detach it "
                    f"(annotation {DETACHED_ANNOTATION}) to remove it untouched",
                    409,
                )
            try:
                apis = self._apis()
                self._call(apis.custom.delete_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name)
            except DriverError as exc:
                if exc.status != 404:
                    raise
        self._delete_secret(_secret_name(name))
        self._delete_secret(_user_data_name(name))

    def get(self, node: NodeTarget) -> BackendNode:
        """The node's BareMetalHost, mapped (404 when it does not exist)."""
        return backend_node(self._read(self._host_name(node)))

    def list_all(self) -> list[BackendNode]:
        """Every Kiln-managed BareMetalHost in the namespace, in one request."""
        apis = self._apis()
        listed = self._call(apis.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                            label_selector=f"{MANAGED_LABEL}=true")
        return [backend_node(item) for item in listed.get("items", [])]

    def set_provision_state(self, node: NodeTarget, verb: str, image: Image | None = None) -> None:
        """Request an Ironic provision verb the Metal3 way (see the module docstring)."""
        if verb == "rebuild":
            raise DriverError(f'Metal3 has no rebuild (node "{node.name}"): undeploy then deploy', 400)
        if verb == "abort":
            raise DriverError(f'Metal3 cannot abort an operation (node "{node.name}"): BMO retries on its own', 400)
        if verb not in _VERBS:
            raise DriverError(f'unknown provision verb "{verb}" for node "{node.name}"', 400)
        name = self._host_name(node)
        current = backend_node(self._read(name))
        state = current.provision_state
        if state not in METAL3_TRANSITIONS[_VERBS[verb]].sources:
            automatic = verb in {"manage", "provide"}
            raise DriverError(
                f'The requested action "{verb}" can not be performed on node "{node.name}" '
                f'while it is in state "{state}".'
                + (" Metal3 registers, inspects and cleans hosts by itself; wait for it." if automatic else "")
                + (f" Last error: {current.last_error}" if automatic and current.last_error else ""),
                400,
            )
        if verb in {"manage", "provide"}:
            return  # Metal3 has done it already
        if verb == "inspect":
            self._patch(name, {"metadata": {"annotations": {INSPECT_ANNOTATION: ""}}})
        elif verb == "active":
            self._deploy(node, name, image)
        else:  # "deleted"
            self._patch(name, {"spec": {"image": None, "userData": None, "online": False}})
            self._delete_secret(_user_data_name(name))

    def set_power(self, node: NodeTarget, state: str) -> None:
        """`power on`/`power off` set spec.online; `rebooting` sets the reboot annotation."""
        name = self._host_name(node)
        if state == PowerState.ON:
            self._patch(name, {"spec": {"online": True}})
        elif state == PowerState.OFF:
            self._patch(name, {"spec": {"online": False}})
        elif state == "rebooting":
            self._patch(name, {"metadata": {"annotations": {REBOOT_ANNOTATION: ""}}})
        else:
            raise DriverError(f'unknown power state "{state}" for node "{node.name}"', 400)

    def set_maintenance(self, node: NodeTarget, on: bool, reason: str | None = None) -> None:
        """Pause (maintenance on, the annotation's value is the reason) or resume BMO's work on the host."""
        value = (reason or DEFAULT_PAUSE_REASON) if on else None
        self._patch(self._host_name(node), {"metadata": {"annotations": {PAUSED_ANNOTATION: value}}})

    def close(self) -> None:
        """Release the HTTP connections of a client this driver built."""
        if self._apis_cache is not None and self._api_client is None:
            self._apis_cache.custom.api_client.close()
        self._apis_cache = None

    # -- helpers --------------------------------------------------------------------------

    def _deploy(self, node: NodeTarget, name: str, image: Image | None) -> None:
        if image is None:
            raise DriverError(f'Cannot deploy node "{node.name}": no image given', 400)
        spec: dict[str, Any] = {"image": image_spec(image), "online": True, "userData": None}
        if image.config_drive:
            secret = _user_data_name(name)
            self._put_secret(secret, name, {"userData": image.config_drive}, replace=True)
            spec["userData"] = {"name": secret, "namespace": self.namespace}
        self._patch(name, {"spec": spec})

    def _host_name(self, node: NodeTarget) -> str:
        external_id = node.external_id or node.name
        return external_id.rpartition("/")[2]

    def _read(self, name: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
        apis = self._apis()
        try:
            return self._call(apis.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name)
        except DriverError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    def _patch(self, name: str, body: dict[str, Any]) -> None:
        apis = self._apis()
        self._call(apis.custom.patch_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name, body,
                   _content_type=MERGE_PATCH)

    def _put_secret(self, secret: str, host: str, data: dict[str, str], *, replace: bool = False) -> None:
        """Create an Opaque Secret; replace it if `replace` or if it is a Kiln leftover."""
        apis = self._apis()
        body = k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name=secret, labels={MANAGED_LABEL: "true", HOST_LABEL: host}),
            type="Opaque",
            data={key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
        )
        try:
            self._call(apis.core.create_namespaced_secret, self.namespace, body)
            return
        except DriverError as exc:
            if exc.status != 409:
                raise
        existing = self._call(apis.core.read_namespaced_secret, secret, self.namespace)
        if not replace and (existing.metadata.labels or {}).get(MANAGED_LABEL) != "true":
            raise DriverError(f'Secret "{secret}" already exists in namespace "{self.namespace}"', 409)
        self._call(apis.core.replace_namespaced_secret, secret, self.namespace, body)

    def _delete_secret(self, secret: str, *, quiet: bool = False) -> None:
        apis = self._apis()
        try:
            self._call(apis.core.delete_namespaced_secret, secret, self.namespace)
        except DriverError as exc:
            if exc.status != 404 and not quiet:
                raise

    def _ensure_namespace(self, apis: _Apis) -> None:
        if self._namespace_ready:
            return
        body = k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=self.namespace))
        try:
            self._call(apis.core.create_namespace, body)
        except DriverError as exc:
            # 409: it exists. 403: Kiln may not create namespaces; an admin made this one.
            cause = exc.__cause__
            if not (isinstance(cause, ApiException) and cause.status in (403, 409)):
                raise
        self._namespace_ready = True

    def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One Kubernetes API request; every failure becomes a DriverError."""
        try:
            return method(*args, _request_timeout=(min(3.0, self.timeout), self.timeout), **kwargs)
        except ApiException as exc:
            status = _API_STATUS.get(exc.status or 0, 502)
            raise DriverError(_api_message(exc), status) from exc
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            host = self._apis_cache.host if self._apis_cache else "?"
            raise DriverError(f"Kubernetes API {host} unreachable: {reason}", 502) from exc

    def _apis(self) -> _Apis:
        if self._apis_cache is None:
            api_client = self._api_client or self._build_client()
            self._apis_cache = _Apis(k8s.CustomObjectsApi(api_client), k8s.CoreV1Api(api_client),
                                     api_client.configuration.host)
        return self._apis_cache

    def _build_client(self) -> k8s.ApiClient:
        configuration = k8s.Configuration()
        try:
            if self._kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                k8s_config.load_incluster_config(client_configuration=configuration)
            else:
                k8s_config.load_kube_config(config_file=self._kubeconfig, client_configuration=configuration)
        except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            where = self._kubeconfig or "the default kubeconfig"
            raise DriverError(f"cannot load Kubernetes config from {where}: {exc}", 502) from exc
        configuration.retries = 1  # one retry, then fail fast: the sync job polls again
        return k8s.ApiClient(configuration)


def _api_message(exc: ApiException) -> str:
    """The `message` of the API's Status body, else the HTTP status line."""
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"Kubernetes API error {exc.status}: {exc.reason}".strip()


def _secret_name(host: str) -> str:
    return f"{host}-bmc-secret"


def _user_data_name(host: str) -> str:
    return f"{host}-user-data"
