"""API shapes of VDCs, grants, quotas, leases and GPU instance leases."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from collectors.mig_profiles import PROFILE_PATTERN
from fleet.schemas import NodeName
from kiln.db import MAX_INTEGER
from kiln.tenants import Slug

SelectorKind = Literal["tag", "rack", "resource_class", "gpu_model"]
Count = Annotated[int, Field(ge=0, le=MAX_INTEGER)]
Money = Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=6)]


class Quotas(BaseModel):
    """Limits; None means unlimited. `max_gpu_hours` is per billing period (calendar month, UTC).

    `budget` is recorded here and enforced by metering's budget alerts."""

    model_config = ConfigDict(extra="forbid")

    max_nodes: Count | None = None
    max_gpus: Count | None = None
    max_gpu_hours: Count | None = None
    budget: Money | None = None


class Selector(BaseModel):
    """Nodes matching `kind` = `value` belong to the VDC."""

    model_config = ConfigDict(extra="forbid")

    kind: SelectorKind
    value: str = Field(min_length=1, max_length=128)


class Grant(Quotas):
    """A tenant the VDC is granted to, with its own quotas inside the VDC."""

    tenant: Slug


def _unique_tenants(grants: list[Grant] | None) -> list[Grant] | None:
    slugs = [g.tenant for g in grants or []]
    if len(slugs) != len(set(slugs)):
        raise ValueError("each tenant may be granted a VDC once")
    return grants


class VdcCreate(Quotas):
    """A VDC: explicit nodes and/or selectors, VDC-wide quotas, and the tenants it is granted to."""

    name: Slug
    description: str = Field(default="", max_length=2000)
    nodes: list[NodeName] = Field(default_factory=list)
    selectors: list[Selector] = Field(default_factory=list)
    tenants: list[Grant] = Field(default_factory=list)

    _tenants = field_validator("tenants")(_unique_tenants)


class VdcUpdate(Quotas):
    """Changes to a VDC; lists given replace the current ones."""

    description: str | None = Field(default=None, max_length=2000)
    nodes: list[NodeName] | None = None
    selectors: list[Selector] | None = None
    tenants: list[Grant] | None = None

    _tenants = field_validator("tenants")(_unique_tenants)


class QuotaUse(BaseModel):
    """How much of a quota is used now (GPU-hours: this billing period)."""

    nodes: int
    gpus: int
    gpu_hours: Decimal
    instance_gpus: Decimal = Field(default=Decimal("0.000000"), description="GPUs held as MIG instances, by compute fraction "
                                   "(6 places); `gpus` + this is what `max_gpus` is checked against.")


class GrantPublic(Grant):
    """A grant with its current use."""

    used: QuotaUse


class VdcPublic(BaseModel):
    """A VDC as the API returns it."""

    id: int
    name: str
    description: str
    max_nodes: int | None
    max_gpus: int | None
    max_gpu_hours: int | None
    budget: Decimal | None
    nodes: list[str]
    selectors: list[Selector]
    tenants: list[GrantPublic]
    member_nodes: list[str] = Field(description="Every node in the VDC: explicit ones and selector matches.")
    used: QuotaUse
    created_at: datetime


class LeaseCreate(BaseModel):
    """Lease a node to a tenant through a VDC granted to it."""

    model_config = ConfigDict(extra="forbid")

    node: NodeName
    tenant: Slug
    vdc: Slug | None = Field(default=None, description="Needed only when the node is in several of the tenant's VDCs.")
    starts_at: AwareDatetime | None = Field(default=None, description="Default: now.")
    ends_at: AwareDatetime | None = Field(default=None, description="Default: open-ended.")
    note: str = Field(default="", max_length=500)


class LeaseUpdate(BaseModel):
    """End a lease (or move its end)."""

    model_config = ConfigDict(extra="forbid")

    ends_at: AwareDatetime
    note: str | None = Field(default=None, max_length=500)


class LeasePublic(BaseModel):
    """A lease as the API returns it."""

    id: int
    node: str
    node_id: int
    tenant: str
    vdc: str | None
    starts_at: datetime
    ends_at: datetime | None
    created_by: str
    created_at: datetime
    note: str


class GpuInstanceLeaseCreate(LeaseCreate):
    """Lease one MIG instance of a node's GPU to a tenant through a VDC granted to it."""

    gpu_index: int = Field(ge=0, le=MAX_INTEGER, description="The physical GPU on the node, 0-based.")
    profile: str = Field(pattern=PROFILE_PATTERN.pattern, description="A MIG profile of that GPU's model, e.g. 3g.40gb.")


class GpuInstanceLeasePublic(LeasePublic):
    """A GPU instance lease as the API returns it: `compute_fraction` is the part of its GPU it holds."""

    gpu_index: int
    gpu_model: str = Field(description="The GPU's model when the lease was made (what it is billed as).")
    profile: str
    compute_fraction: str = Field(description="Compute slices ÷ the GPU's slices, e.g. 3/7.")
