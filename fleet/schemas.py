"""API shapes of fleet inventory: what callers send and what they get back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from fleet.bmc import parse_bmc_address, parse_redfish_address
from kiln.db import MAX_INTEGER

NodeName = Annotated[
    str,
    Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$", description="Lower-case letters, digits, `.` and `-`."),
]
MacAddress = Annotated[str, Field(pattern=r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$", description="aa:bb:cc:dd:ee:ff")]
Tag = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/=-]{0,63}$")]
Provisioner = Literal["ironic", "metal3", "fake"]
HardwareType = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="Ironic hardware type, e.g. ipmi, redfish, fake-hardware.")]


class DiskFact(BaseModel):
    """A disk of a node."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    size_gb: int = Field(ge=0)


class NicFact(BaseModel):
    """A network interface of a node."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    mac: MacAddress | None = None
    speed_gbps: int | None = Field(default=None, ge=0)


class HardwareFacts(BaseModel):
    """What the node is made of (set by hand, by import, by inspection or by the IPMI collector)."""

    model_config = ConfigDict(extra="forbid")
    cpu_model: str | None = Field(default=None, max_length=128)
    cpu_cores: int | None = Field(default=None, ge=1)
    ram_mib: int | None = Field(default=None, ge=1)
    disks: list[DiskFact] = Field(default_factory=list)
    nics: list[NicFact] = Field(default_factory=list)


class GpuSpec(BaseModel):
    """One GPU of a node."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)
    index: int = Field(ge=0, le=63)
    model: str = Field(min_length=1, max_length=128, description="e.g. NVIDIA H100 80GB HBM3")
    vendor: Literal["nvidia", "amd"] = "nvidia"
    uuid: str | None = Field(default=None, max_length=64)
    memory_mib: int | None = Field(default=None, ge=1, le=MAX_INTEGER)


Zone = Annotated[str, Field(
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
    description="Grid zone whose carbon intensity applies (Electricity Maps' zone key, e.g. DE, US-CAL-CISO); "
    "unset: KILN_CARBON_ZONE.")]


RedfishAddress = Annotated[str, Field(
    max_length=255,
    description="A second, collection-only address of the same BMC's Redfish service, for a node whose "
    "bmc_address is ipmi://: redfish://HOST[:PORT][/SYSTEM-PATH] (or redfish+http://, redfish+https://). "
    "It uses the node's BMC username and password; the Redfish collector polls it, Ironic never sees it.")]


def _redfish_address(value: str | None) -> str | None:
    if value is None:
        return None
    parse_redfish_address(value)
    return value.strip()


def _unique_gpu_indexes(gpus: list[GpuSpec] | None) -> list[GpuSpec] | None:
    if gpus is not None:
        indexes = [g.index for g in gpus]
        if len(indexes) != len(set(indexes)):
            raise ValueError("GPU indexes must be unique within a node")
    return gpus


class NodeCreate(BaseModel):
    """Enroll a node: its BMC, its backend and what it is made of."""

    model_config = ConfigDict(extra="forbid")

    name: NodeName
    provisioner: Provisioner
    bmc_address: str = Field(max_length=255, description="ipmi://HOST[:PORT], or redfish://HOST[:PORT][/SYSTEM-PATH] "
                             "(HTTPS; redfish+http:// for plain HTTP; no path: the BMC's only system)")
    redfish_address: RedfishAddress | None = None
    bmc_username: str | None = Field(default=None, max_length=64)
    bmc_password: SecretStr | None = Field(default=None, max_length=256)
    ironic_driver: HardwareType | None = Field(
        default=None, description="Ironic hardware type; unset: the BMC address's kind (ipmi or redfish); "
        "fake-hardware for tests.")
    ipmi_cipher_suite: int | None = Field(default=None, ge=0, le=17)
    ipmi_privilege: Literal["user", "operator", "admin"] | None = Field(
        default=None, description="IPMI session privilege for this BMC (KILN_IPMI_PRIVILEGE when unset).")
    boot_mac: MacAddress | None = None
    resource_class: str | None = Field(default=None, max_length=64)
    rack: str | None = Field(default=None, max_length=64)
    zone: Zone | None = None
    tags: list[Tag] = Field(default_factory=list)
    facts: HardwareFacts = Field(default_factory=HardwareFacts)
    gpus: list[GpuSpec] = Field(default_factory=list)

    @field_validator("bmc_address")
    @classmethod
    def _bmc_address(cls, value: str) -> str:
        parse_bmc_address(value)
        return value.strip()

    @field_validator("redfish_address")
    @classmethod
    def _redfish(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = _redfish_address(value)
        primary = info.data.get("bmc_address")
        if value and primary and parse_bmc_address(primary).driver != "ipmi":
            raise ValueError("a second Redfish address is only for nodes whose bmc_address is ipmi:// "
                             "(a Redfish bmc_address is polled by the Redfish collector already)")
        return value

    @field_validator("boot_mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        return value.lower().replace("-", ":") if value else value

    _gpus = field_validator("gpus")(_unique_gpu_indexes)

    @model_validator(mode="after")
    def _hardware_type_of_the_address(self) -> Self:
        if self.ironic_driver is None:
            self.ironic_driver = parse_bmc_address(self.bmc_address).driver
        return self


class NodeUpdate(BaseModel):
    """Fields of a node that Kiln owns (BMC and backend identity change by re-enrolling); the
    second, collection-only `redfish_address` (null: none)."""

    model_config = ConfigDict(extra="forbid")

    redfish_address: RedfishAddress | None = None
    resource_class: str | None = Field(default=None, max_length=64)
    rack: str | None = Field(default=None, max_length=64)
    zone: Zone | None = None
    tags: list[Tag] | None = None
    facts: HardwareFacts | None = None
    gpus: list[GpuSpec] | None = None

    _gpus = field_validator("gpus")(_unique_gpu_indexes)
    _redfish = field_validator("redfish_address")(_redfish_address)


class NodePublic(BaseModel):
    """A node as the API returns it (never its BMC password)."""

    id: int
    name: str
    provisioner: str
    external_id: str | None = None
    hardware_type: str
    bmc_driver: str
    bmc_address: str | None = Field(default=None, description="Blank for tenant roles.")
    redfish_address: str | None = Field(default=None, description="The second, collection-only Redfish address "
                                        "(same credentials as bmc_address); blank for tenant roles.")
    bmc_username: str | None = None
    bmc_password_set: bool
    boot_mac: str | None
    resource_class: str | None
    rack: str | None
    zone: str | None = None
    tags: list[str]
    facts: dict[str, Any]
    gpus: list[GpuSpec]
    provision_state: str
    target_provision_state: str | None
    power_state: str | None
    maintenance: bool
    maintenance_reason: str | None
    last_error: str | None = None
    created_at: datetime
    updated_at: datetime
    synced_at: datetime | None
