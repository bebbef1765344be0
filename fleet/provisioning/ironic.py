"""The OpenStack Ironic provisioning driver, through openstacksdk's baremetal proxy.

Every call makes one or two short HTTP requests and returns: state changes are started
(`wait=False`) and Kiln polls `get`. The SDK's wait helpers (2 s polling) and its built-in
409 retries (~16 s) are not used; a locked node (409 NodeLocked) is retried here for about
3 s. The SDK is used without what a bulk action does not need (`ironic_proxy`): a state
change does not read the whole node back, and `get` reads Ironic's JSON without building SDK
resources. A request whose connection was refused
(nothing reached Ironic) is sent again up to twice, 0.2 s and 0.6 s later; so is one whose
connection broke (reset by a saturated API server, a keep-alive connection closed under it)
when sending it twice does no harm: reads, power on/off, maintenance, delete, and creating a
node that Ironic does not have by its name. Creating ports, provision-state changes, reboots
and instance_info patches are not resent after a broken connection, since Ironic may have
acted on them; their error says Ironic is unreachable. Errors become `DriverError` carrying Ironic's own message (see `ironic_errors`).

Needs the `ironic` extra (openstacksdk).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import openstack.connection

from fleet.bmc import IPMI_DEFAULT_PORT, BmcAddress, discover_redfish_system, parse_bmc_address
from fleet.provisioning.actions import TRANSITIONS
from fleet.provisioning.base import BackendNode, DriverError, Image, NodeTarget
from fleet.provisioning.ironic_errors import SDK_ERRORS, is_conflict, may_resend, translate
from fleet.provisioning.ironic_proxy import NotReadBack, get_fields
from fleet.provisioning.states import PowerRequest, PowerState, ProvisionState

T = TypeVar("T")

DEFAULT_HARDWARE_TYPE = {"ipmi": "ipmi", "redfish": "redfish"}
FAKE_HARDWARE = "fake-hardware"
DEFAULT_IPMI_CIPHER_SUITE = "3"
# NodeTarget.properties keys that steer this driver and are not sent to Ironic.
KILN_PRIVATE_PROPERTIES = frozenset({"ipmi_cipher_suite", "ipmi_privilege"})
NO_BMC_DOMAIN = "invalid"  # RFC 6761: names under .invalid never resolve; on fake-hardware: no BMC at all
IRONIC_PRIV_LEVELS = {"user": "USER", "operator": "OPERATOR", "admin": "ADMINISTRATOR"}  # driver_info ipmi_priv_level
# Targets of PUT /v1/nodes/{id}/states/power that Kiln uses.
POWER_TARGETS = frozenset(PowerRequest)
# Provision verbs that deploy an image (instance_info and config drive apply).
IMAGE_VERBS = frozenset({"active", "rebuild"})
# The node fields Kiln reads; `get` and `list_all` ask Ironic for these only.
NODE_FIELDS = [
    "uuid", "name", "provision_state", "power_state", "target_provision_state", "target_power_state",
    "maintenance", "maintenance_reason", "last_error",
]
# instance_info keys this driver owns; stale ones are removed when the image changes.
CHECKSUM_KEYS = ("image_checksum", "image_os_hash_algo", "image_os_hash_value")
# Ironic itself waits ~2 s for a node lock before answering 409; retry that for ~3 s more.
LOCKED_RETRY_SECONDS = 3.0
# Seconds to wait before each resend of a request whose connection failed (see the module docstring).
RESEND_DELAYS = (0.2, 0.6)
# Power targets that can be sent twice with the same result (a second reboot would reboot again).
REPEATABLE_POWER_TARGETS = frozenset({PowerRequest.ON, PowerRequest.OFF})


class IronicDriver:
    """`ProvisioningDriver` for OpenStack Ironic.

    `IronicDriver("http://ironic:6385")` talks to a standalone, noauth Ironic.
    For a Keystone-authenticated cloud pass openstacksdk `Connection` keyword arguments
    (`cloud="mycloud"`, or `auth={...}` with `auth_type`, `region_name`, ...), with or without
    `endpoint` (which then overrides the catalogue's baremetal endpoint), or pass a ready
    `connection` (build it with `baremetal_status_code_retries=0`, or every 409 is retried
    for ~16 s). `timeout` bounds every HTTP request; connecting gives up after at most 5 s.
    `redfish_verify_tls` becomes Redfish nodes' `redfish_verify_ca` (and checks the BMC's
    certificate when Kiln asks a BMC which system to use). Constructing does no I/O: an
    unreachable Ironic is reported by the first call.
    """

    name = "ironic"
    transitions = TRANSITIONS

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        connection: openstack.connection.Connection | None = None,
        timeout: float = 30,
        redfish_verify_tls: bool = True,
        **connection_kwargs: Any,
    ) -> None:
        if connection is not None and (endpoint or connection_kwargs):
            raise ValueError("pass either a ready connection or endpoint/connection arguments, not both")
        if connection is None and not endpoint and not connection_kwargs:
            raise ValueError("IronicDriver needs an endpoint, openstacksdk connection arguments or a connection")
        if connection is None:
            kwargs: dict[str, Any] = {"baremetal_status_code_retries": 0, "api_timeout": timeout}
            if endpoint:
                kwargs["baremetal_endpoint_override"] = endpoint
                if not {"cloud", "auth", "auth_type", "session"} & connection_kwargs.keys():
                    kwargs["auth_type"] = "none"
            kwargs.update(connection_kwargs)
            try:
                connection = openstack.connection.Connection(**kwargs)
            except SDK_ERRORS as exc:
                raise translate(exc, where=endpoint or str(connection_kwargs.get("cloud", "the configured cloud"))) from exc
            # keystoneauth takes one float; requests also takes (connect, read).
            connection.session.timeout = (min(5.0, timeout), timeout)
        self._conn = connection
        self._redfish_verify_tls = redfish_verify_tls
        self._where = endpoint or _configured_endpoint(connection)

    # -- ProvisioningDriver -------------------------------------------------------------

    def enroll(self, node: NodeTarget) -> BackendNode:
        """Create the node in Ironic (it starts in `enroll`) and its boot port.

        If creating the port fails, the new Ironic node is deleted before the error is
        raised, so nothing is left half-enrolled. A Redfish address without a system path gets
        the BMC's only system (asked from the BMC) as `redfish_system_id`.
        """
        attrs = ironic_node_attributes(node, redfish_verify_tls=self._redfish_verify_tls)
        info = attrs["driver_info"]
        if "redfish_address" in info and not info["redfish_system_id"]:
            info["redfish_system_id"] = self._discover_system(node)
        created = self._create_node(node, attrs)
        if node.boot_mac:
            try:
                self._call(node, lambda bm: bm.create_port(node_uuid=created.id, address=node.boot_mac),
                           uuid=created.id)
            except DriverError as exc:
                leftover = self._delete_orphan(node, created.id)
                if leftover:
                    raise DriverError(f"{exc}; {leftover}", status=exc.status) from exc
                raise
        return _backend_node(node.name, created)

    def remove(self, node: NodeTarget) -> None:
        """Delete the node (and its ports) from Ironic; a node already gone is fine.

        Ironic refuses to delete a node that is deployed or busy; its message is raised.
        """
        self._call(node, lambda bm: bm.delete_node(_ident(node), ignore_missing=True), idempotent=True)

    def get(self, node: NodeTarget) -> BackendNode:
        """The node's current state (one GET of the fields Kiln reads)."""
        found = self._call(node, lambda bm: get_fields(bm, _ident(node), NODE_FIELDS), idempotent=True)
        return _backend_node(node.name, found)

    def list_all(self) -> list[BackendNode]:
        """Every node in Ironic: one paginated listing limited to the fields Kiln reads."""
        listed = self._call(None, lambda bm: list(bm.nodes(fields=NODE_FIELDS)), idempotent=True)
        return [_backend_node(item.name or item.id, item) for item in listed]

    def set_provision_state(self, node: NodeTarget, verb: str, image: Image | None = None) -> None:
        """Start a provision-state change with Ironic's verb (`manage`, `provide`, `active`, ...).

        For `active` and `rebuild` with an image, the node's instance_info gets the image
        URL and checksum first, and the image's config drive is passed along.
        """
        if image is not None and verb not in IMAGE_VERBS:
            raise DriverError(f"an image can be given only to deploy or rebuild a node, not to {verb!r}", status=400)
        if image is not None:
            self._set_instance_info(node, image)
        config_drive = config_drive_value(image.config_drive) if image is not None else None
        self._call_retrying_locked(
            node, lambda bm: NotReadBack.new(id=_ident(node)).set_provision_state(bm, verb, config_drive=config_drive)
        )

    def set_power(self, node: NodeTarget, state: str) -> None:
        """Start a power change: `power on`, `power off` or `rebooting` (not awaited)."""
        if state not in POWER_TARGETS:
            raise ValueError(f"unknown power target {state!r}; expected one of {sorted(POWER_TARGETS)}")
        self._call_retrying_locked(node, lambda bm: bm.set_node_power_state(_ident(node), state, wait=False),
                                   idempotent=state in REPEATABLE_POWER_TARGETS)

    def set_maintenance(self, node: NodeTarget, on: bool, reason: str | None = None) -> None:
        """Put the node in maintenance (with `reason`) or take it out."""
        if on:
            self._call_retrying_locked(node, lambda bm: NotReadBack.new(id=_ident(node)).set_maintenance(bm, reason),
                                       idempotent=True)
        else:
            self._call_retrying_locked(node, lambda bm: NotReadBack.new(id=_ident(node)).unset_maintenance(bm),
                                       idempotent=True)

    # -- helpers --------------------------------------------------------------------------

    def _set_instance_info(self, node: NodeTarget, image: Image) -> None:
        """PATCH instance_info with the image; checksum keys of a previous image that the
        answer (the patched node) still shows are removed by a second PATCH."""
        wanted = {"image_source": image.url, **image_checksum_fields(image.checksum)}
        patch = [{"op": "add", "path": f"/instance_info/{key}", "value": value} for key, value in wanted.items()]
        patched = self._call_retrying_locked(node, lambda bm: bm.patch_node(_ident(node), patch))
        existing = patched.instance_info or {}
        stale = [{"op": "remove", "path": f"/instance_info/{key}"}
                 for key in CHECKSUM_KEYS if key in existing and key not in wanted]
        if stale:
            self._call_retrying_locked(node, lambda bm: bm.patch_node(_ident(node), stale), uuid=patched.id)

    def _create_node(self, node: NodeTarget, attrs: dict[str, Any]) -> Any:
        """POST /v1/nodes. After a broken connection it is sent again (after each of
        `RESEND_DELAYS`) only when Ironic has no node of that name, i.e. never received it: a
        saturated API server resets some of the new connections of a bulk import's first burst."""
        for delay in (*RESEND_DELAYS, None):
            try:
                return self._call(node, lambda bm: bm.create_node(**attrs))
            except DriverError as exc:
                # broken, not refused (which `_call` already resent): did the request reach Ironic?
                broken = may_resend(exc.__cause__, True) and not may_resend(exc.__cause__, False)
                if delay is None or not broken or self._name_taken(node):
                    raise
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _name_taken(self, node: NodeTarget) -> bool:
        """Whether Ironic has a node called `node.name` (or cannot say)."""
        try:
            self._call(node, lambda bm: get_fields(bm, node.name, ["uuid"]), idempotent=True)
        except DriverError as exc:
            return exc.status != 404
        return True

    def _call(self, node: NodeTarget | None, call: Callable[[Any], T], uuid: str | None = None, *,
              idempotent: bool = False) -> T:
        """Run `call(baremetal_proxy)`, turning SDK errors into `DriverError`; a failed connection
        is tried again after each of `RESEND_DELAYS` when `may_resend` allows it."""
        for attempt in range(len(RESEND_DELAYS) + 1):
            try:
                return call(self._conn.baremetal)
            except SDK_ERRORS as exc:
                if attempt < len(RESEND_DELAYS) and may_resend(exc, idempotent):
                    time.sleep(RESEND_DELAYS[attempt])
                    continue
                name = node.name if node else None
                raise translate(exc, where=self._where, uuid=uuid or (node.external_id if node else None),
                                name=name) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _call_retrying_locked(self, node: NodeTarget, call: Callable[[Any], T], uuid: str | None = None, *,
                              idempotent: bool = False) -> T:
        """`_call`, retrying Ironic's 409 (NodeLocked: another operation holds the node) for
        about `LOCKED_RETRY_SECONDS`, then raising it as DriverError(status=409)."""
        deadline = time.monotonic() + LOCKED_RETRY_SECONDS
        delay = 0.1
        while True:
            try:
                return self._call(node, call, uuid, idempotent=idempotent)
            except DriverError as exc:
                if not is_conflict(exc.__cause__) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _discover_system(self, node: NodeTarget) -> str:
        """The system path of a Redfish node whose address names none; DriverError(400) naming the node."""
        try:
            return discover_redfish_system(parse_bmc_address(node.bmc_address), node.bmc_username,
                                           node.bmc_password, verify=self._redfish_verify_tls)
        except ValueError as exc:
            raise DriverError(f"node {node.name}: which Redfish system to enroll? {exc}", status=400) from exc

    def _delete_orphan(self, node: NodeTarget, uuid: str) -> str | None:
        """Delete a node whose enrollment failed half-way; what went wrong if that failed too."""
        try:
            self._conn.baremetal.delete_node(uuid, ignore_missing=True)
        except SDK_ERRORS as exc:
            failure = translate(exc, where=self._where, uuid=uuid, name=node.name)
            return f"removing the half-enrolled Ironic node {uuid} also failed: {failure}"
        return None


def ironic_node_attributes(node: NodeTarget, *, redfish_verify_tls: bool = True) -> dict[str, Any]:
    """The attributes of Ironic's POST /v1/nodes for `node` (driver, interfaces, driver_info).

    `fake-hardware` (a BMC without an agent ramdisk: tests, demos) keeps fake deploy, boot and
    cleaning with real power and management: Ironic's `ipmitool` ones for an `ipmi://` address,
    its `redfish` ones for a Redfish address. A BMC host under `.invalid` (which never resolves)
    names no BMC: power and management stay fake too.
    """
    try:
        address = parse_bmc_address(node.bmc_address)
    except ValueError as exc:
        raise DriverError(str(exc), status=400) from exc
    hardware_type = node.hardware_type or DEFAULT_HARDWARE_TYPE[address.driver]
    attrs: dict[str, Any] = {
        "name": node.name,
        "driver": hardware_type,
        "driver_info": {},
        "properties": {k: v for k, v in node.properties.items() if k not in KILN_PRIVATE_PROPERTIES},
    }
    if node.resource_class:
        attrs["resource_class"] = node.resource_class
    if hardware_type == FAKE_HARDWARE and address.host.lower().rstrip(".").rsplit(".", 1)[-1] == NO_BMC_DOMAIN:
        return attrs
    if address.driver == "ipmi":
        attrs["driver_info"] = _ipmi_driver_info(node, address)
        if hardware_type == FAKE_HARDWARE:
            attrs["power_interface"] = attrs["management_interface"] = "ipmitool"
    else:
        attrs["driver_info"] = _redfish_driver_info(node, address, redfish_verify_tls)
        if hardware_type == FAKE_HARDWARE:
            attrs["power_interface"] = attrs["management_interface"] = "redfish"
    return attrs


def image_checksum_fields(checksum: str) -> dict[str, str]:
    """instance_info checksum keys: `algo:hex` → os_hash algo/value; md5 hex or URL → image_checksum."""
    algo, sep, value = checksum.partition(":")
    if sep and algo.lower() in {"md5", "sha256", "sha512"}:
        return {"image_os_hash_algo": algo.lower(), "image_os_hash_value": value}
    return {"image_checksum": checksum}


def config_drive_value(config_drive: str | None) -> str | dict[str, Any] | None:
    """Ironic's `configdrive`: JSON object text becomes a dict (Ironic builds the ISO from its
    meta_data/user_data/network_data); a URL or base64 gzipped ISO is passed as it is."""
    if not config_drive:
        return None
    if config_drive.lstrip().startswith("{"):
        try:
            parsed = json.loads(config_drive)
        except json.JSONDecodeError as exc:
            raise DriverError(f"the config drive is not valid JSON: {exc}", status=400) from exc
        if isinstance(parsed, dict):
            return parsed
    return config_drive


def _ipmi_driver_info(node: NodeTarget, address: BmcAddress) -> dict[str, Any]:
    info: dict[str, Any] = {
        "ipmi_address": address.host,
        "ipmi_port": address.port or IPMI_DEFAULT_PORT,
        "ipmi_cipher_suite": str(node.properties.get("ipmi_cipher_suite", DEFAULT_IPMI_CIPHER_SUITE)),
    }
    if node.bmc_username:
        info["ipmi_username"] = node.bmc_username
    if node.bmc_password:
        info["ipmi_password"] = node.bmc_password
    if "ipmi_privilege" in node.properties:
        info["ipmi_priv_level"] = IRONIC_PRIV_LEVELS[node.properties["ipmi_privilege"]]
    return info


def _redfish_driver_info(node: NodeTarget, address: BmcAddress, verify_tls: bool) -> dict[str, Any]:
    """driver_info of a Redfish node; an empty `redfish_system_id` is for the caller to fill.

    `redfish_verify_ca` is always explicit: false for plain HTTP (nothing to verify) or when
    asked. (Ironic 39 reads a `[<hardware type>] verify_ca` option whenever it is true, which
    fails for fake-hardware: "no such option fake-hardware in group [DEFAULT]".)
    """
    info: dict[str, Any] = {
        "redfish_address": address.base_url,
        "redfish_system_id": address.path,
        "redfish_verify_ca": verify_tls and address.transport == "https",
    }
    if node.bmc_username:
        info["redfish_username"] = node.bmc_username
    if node.bmc_password:
        info["redfish_password"] = node.bmc_password
    return info


def _ident(node: NodeTarget) -> str:
    """How Ironic knows the node: its UUID once enrolled, else its name."""
    return node.external_id or node.name


def _backend_node(name: str, found: Any) -> BackendNode:
    """A `BackendNode` from the SDK's Node; unknown states from a newer Ironic are a DriverError.

    Ironic's `last_error` names the node by UUID ("Failed to get power state for node 1f…");
    the node's name replaces it, as in `translate`."""
    try:
        provision_state = ProvisionState(found.provision_state)
        power_state = PowerState(found.power_state) if found.power_state else None
    except ValueError as exc:
        raise DriverError(
            f"Ironic reports node {name} in provision state {found.provision_state!r} / power state "
            f"{found.power_state!r}, which this version of Kiln does not know (is Ironic newer than Kiln?)",
            status=502,
        ) from exc
    return BackendNode(
        external_id=found.id,
        provision_state=provision_state,
        power_state=power_state,
        target_provision_state=found.target_provision_state or None,
        target_power_state=found.target_power_state or None,
        maintenance=bool(found.is_maintenance),
        maintenance_reason=found.maintenance_reason or None,
        last_error=found.last_error.replace(found.id or name, name) if found.last_error else None,
        name=found.name or None,
    )


def _configured_endpoint(connection: openstack.connection.Connection) -> str:
    """The baremetal endpoint a connection was configured with, for error messages."""
    override = connection.config.get_endpoint("baremetal")
    return override or f"cloud {connection.config.name!r}"
