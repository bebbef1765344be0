"""Fleet tables: nodes and their GPUs and tags, tracked operations, per-node events, firmware baselines.

Tenancy tables (VDCs, leases, quotas) live in `fleet.tenancy_models`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from kiln.db import UTCDateTime, utcnow


class Node(SQLModel, table=True):
    """A bare-metal server: its BMC, its backend (provisioner) and Kiln's mirror of its state."""

    __tablename__ = "node"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True)
    provisioner: str = Field(max_length=16)  # ironic | metal3 | fake
    external_id: str | None = Field(default=None, max_length=64, index=True)
    hardware_type: str = Field(default="ipmi", max_length=32)  # Ironic hardware type
    bmc_driver: str = Field(max_length=16)  # ipmi | redfish
    bmc_address: str = Field(max_length=255)
    # a second, collection-only Redfish address of the same BMC (same credentials); never enrolled
    redfish_address: str | None = Field(default=None, max_length=255)
    bmc_username: str | None = Field(default=None, max_length=64)
    bmc_password_encrypted: str | None = Field(default=None, max_length=512)
    ipmi_cipher_suite: int | None = Field(default=None)
    ipmi_privilege: str | None = Field(default=None, max_length=16)  # user | operator | admin; None: the setting
    boot_mac: str | None = Field(default=None, max_length=17, unique=True)
    resource_class: str | None = Field(default=None, max_length=64, index=True)
    rack: str | None = Field(default=None, max_length=64, index=True)
    zone: str | None = Field(default=None, max_length=64)  # grid zone for carbon intensity; None: KILN_CARBON_ZONE
    facts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    provision_state: str = Field(max_length=32, index=True)
    target_provision_state: str | None = Field(default=None, max_length=32)
    power_state: str | None = Field(default=None, max_length=16)
    maintenance: bool = Field(default=False)
    maintenance_reason: str | None = Field(default=None, max_length=255)
    last_error: str | None = Field(default=None, max_length=2000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    synced_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class NodeTag(SQLModel, table=True):
    """A free-form tag on a node (selections and VDC selectors match on these)."""

    __tablename__ = "node_tag"

    node_id: int = Field(sa_column=Column(Integer, ForeignKey("node.id", ondelete="CASCADE"), primary_key=True))
    tag: str = Field(max_length=64, primary_key=True, index=True)


class Gpu(SQLModel, table=True):
    """One GPU of a node."""

    __tablename__ = "gpu"
    __table_args__ = (UniqueConstraint("node_id", "index"),)

    id: int | None = Field(default=None, primary_key=True)
    node_id: int = Field(sa_column=Column(Integer, ForeignKey("node.id", ondelete="CASCADE"), nullable=False, index=True))
    index: int = Field(ge=0)
    uuid: str | None = Field(default=None, max_length=64, unique=True)
    model: str = Field(max_length=128, index=True)
    vendor: str = Field(default="nvidia", max_length=16)
    memory_mib: int | None = Field(default=None)


class Operation(SQLModel, table=True):
    """A tracked action on one node: who asked, what, when it started and ended, how it went."""

    __tablename__ = "operation"

    id: int | None = Field(default=None, primary_key=True)
    node_id: int = Field(sa_column=Column(Integer, ForeignKey("node.id", ondelete="CASCADE"), nullable=False, index=True))
    bulk_id: str | None = Field(default=None, max_length=36, index=True)
    action: str = Field(max_length=32)
    requested_by: str = Field(max_length=200)
    status: str = Field(max_length=16, index=True)  # pending | running | succeeded | failed
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    result_state: str | None = Field(default=None, max_length=32)
    error: str | None = Field(default=None, max_length=2000)


class NodeEvent(SQLModel, table=True):
    """One line of a node's history (like MAAS's event log)."""

    __tablename__ = "node_event"

    id: int | None = Field(default=None, primary_key=True)
    node_id: int = Field(sa_column=Column(Integer, ForeignKey("node.id", ondelete="CASCADE"), nullable=False, index=True))
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    kind: str = Field(max_length=32)  # enrolled | action | state | error | sync | edit | bmc_log (a BMC log entry)
    message: str = Field(max_length=2000)
    actor: str = Field(default="", max_length=200)
    operation_id: int | None = Field(default=None)


class FirmwareBaseline(SQLModel, table=True):
    """The firmware version a component should run on the nodes of a resource class, or on the
    nodes with a GPU model (`scope` `gpu:<model>`); see fleet/firmware.py."""

    __tablename__ = "firmware_baseline"
    __table_args__ = (UniqueConstraint("scope", "component"),)

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(max_length=140)  # a resource class, or gpu:<GPU model>
    component: str = Field(max_length=64)  # bmc | bios | gpu | nic, or a Redfish FirmwareInventory Id
    version: str = Field(max_length=128)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_by: str = Field(max_length=128)
