"""The provisioning driver protocol: what Kiln asks of Ironic, Metal3 or the fake driver.

Drivers are small and stateless toward Kiln's database: they take a `NodeTarget` (what the
backend needs to know about a node, BMC password decrypted) and return `BackendNode`
snapshots. Kiln's operations layer records, waits and reports. A driver raises
`DriverError` with the backend's own message; the operations layer adds the node's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Protocol

from fleet.provisioning.actions import Action, Transition
from fleet.provisioning.states import PowerState, ProvisionState


class DriverError(Exception):
    """The backend refused or failed a request; `str()` is its own explanation.

    `status` is the HTTP-like status that best describes it (400 illegal request, 404 gone,
    409 conflict/locked, 502 backend unreachable or failing).
    """

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Image:
    """What to deploy: an image URL and its checksum (`sha256:…`, an md5 hex, or a URL to one).

    `config_drive` is a URL, a base64 gzipped ISO, or JSON object text (meta_data/user_data),
    which drivers send as an object."""

    url: str
    checksum: str
    config_drive: str | None = None


@dataclass(frozen=True)
class BackendNode:
    """A node's state as the backend reports it."""

    external_id: str
    provision_state: ProvisionState
    power_state: PowerState | None
    target_provision_state: str | None = None
    target_power_state: str | None = None  # a power change the backend is still carrying out
    maintenance: bool = False
    maintenance_reason: str | None = None
    last_error: str | None = None
    name: str | None = None  # the backend's name for the node (matches Kiln's), when it has one


@dataclass(frozen=True)
class NodeTarget:
    """Everything a backend needs about one node."""

    name: str
    external_id: str | None
    bmc_driver: str  # ipmi | redfish
    bmc_address: str  # as enrolled: ipmi://HOST[:PORT] or redfish://HOST[:PORT]/PATH
    bmc_username: str | None
    bmc_password: str | None = field(repr=False)
    boot_mac: str | None = None
    resource_class: str | None = None
    hardware_type: str | None = None  # Ironic hardware type (ipmi, redfish, fake-hardware)
    properties: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    known: BackendNode | None = None  # Kiln's last view of the node (lets the fake driver resume)


class ProvisioningDriver(Protocol):
    """One backend (Ironic, Metal3, fake). Every call is synchronous and returns promptly;
    long transitions are started here and awaited by polling `get`."""

    name: str
    transitions: Mapping[Action, Transition]  # which action is legal when with this backend

    def enroll(self, node: NodeTarget) -> BackendNode:
        """Register the node (and its boot port) with the backend; clean up on failure."""
        ...

    def remove(self, node: NodeTarget) -> None:
        """Delete the node from the backend (missing is fine)."""
        ...

    def get(self, node: NodeTarget) -> BackendNode:
        """The node's current state."""
        ...

    def list_all(self) -> list[BackendNode]:
        """Every node the backend has, in one request where possible (for the sync job)."""
        ...

    def set_provision_state(self, node: NodeTarget, verb: str, image: Image | None = None) -> None:
        """Start a provision-state change (Ironic verbs: manage, inspect, provide, active, deleted, rebuild, abort)."""
        ...

    def set_power(self, node: NodeTarget, state: str) -> None:
        """Start a power change: `power on`, `power off` or `rebooting`."""
        ...

    def set_maintenance(self, node: NodeTarget, on: bool, reason: str | None = None) -> None:
        """Put the node in or out of maintenance."""
        ...
