"""The Metal3 driver: Kiln's nodes as Metal3 `BareMetalHost`s, through the Kubernetes API.

Metal3's baremetal-operator (BMO) runs Ironic itself and drives each host from the
BareMetalHost's `spec` (what is wanted) to its `status` (what is). This driver writes the spec
(and a credentials Secret), and maps the status onto Ironic's states, Kiln's only states.
Needs the `kubernetes` client (Kiln's `k8s` extra).

How BareMetalHost states map onto Kiln's, the action table, BMC addresses and image specs:
`fleet.provisioning.metal3_hosts`.

Ironic verbs: "active" sets spec.image (+ spec.userData from `Image.config_drive`) and
spec.online; "deleted" removes spec.image; "inspect" sets the `inspect.metal3.io`
annotation; "manage" and "provide" happen automatically in Metal3 (a no-op once the host is
past that point, else a 400 saying so); "rebuild" and "abort" do not exist in Metal3 (400).
`METAL3_TRANSITIONS` (also `Metal3Driver.transitions`) is Kiln's action table as Metal3 has it.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from fleet.provisioning.base import BackendNode, DriverError, Image, NodeTarget
from fleet.provisioning.metal3_hosts import (
    DEFAULT_PAUSE_REASON,
    DETACHED_ANNOTATION,
    INSPECT_ANNOTATION,
    METAL3_TRANSITIONS,
    PAUSED_ANNOTATION,
    PROVISIONED,
    VERBS,
    backend_node,
    bmc_address,
    image_spec,
)
from fleet.provisioning.states import PowerState

T = TypeVar("T")

GROUP, VERSION, PLURAL = "metal3.io", "v1alpha1", "baremetalhosts"
MANAGED_LABEL = "kiln.io/managed"
HOST_LABEL = "kiln.io/host"
RESOURCE_CLASS_LABEL = "kiln.io/resource-class"
REBOOT_ANNOTATION = "reboot.metal3.io"
MERGE_PATCH = "application/merge-patch+json"
_API_STATUS = {400: 400, 404: 404, 409: 409, 410: 409, 422: 400}


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
            if current.provision_state in PROVISIONED and DETACHED_ANNOTATION not in annotations:
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
        if verb not in VERBS:
            raise DriverError(f'unknown provision verb "{verb}" for node "{node.name}"', 400)
        name = self._host_name(node)
        current = backend_node(self._read(name))
        state = current.provision_state
        if state not in METAL3_TRANSITIONS[VERBS[verb]].sources:
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
