"""Tenancy tables, OpenNebula style: VDCs (slices of the fleet), grants with quotas, leases of
whole nodes and of MIG instances of a node's GPUs.

A lease is the tenancy timeline metering bills from: tenant T held node N over [starts_at, ends_at).
No two leases of one node overlap; the database enforces it (an exclusion constraint on
PostgreSQL, a trigger on SQLite; see migration 0002).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, Column, ForeignKey, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

# Loads the tables this module's foreign keys name: a flush sorts tables by those keys.
import fleet.models  # noqa: F401
import kiln.models  # noqa: F401
from kiln.db import UTCDateTime, utcnow
from kiln.types import ExactNumeric


class Vdc(SQLModel, table=True):
    """A named slice of the fleet, with quotas over all tenants it is granted to."""

    __tablename__ = "vdc"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True)
    description: str = Field(default="", max_length=2000)
    max_nodes: int | None = Field(default=None, ge=0)
    max_gpus: int | None = Field(default=None, ge=0)
    max_gpu_hours: int | None = Field(default=None, ge=0)  # per billing period (calendar month, UTC)
    budget: Decimal | None = Field(default=None, sa_column=Column(ExactNumeric(20, 6)))  # exact on SQLite too (migration 0010)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class VdcNode(SQLModel, table=True):
    """A node named explicitly as part of a VDC."""

    __tablename__ = "vdc_node"

    vdc_id: int = Field(sa_column=Column(Integer, ForeignKey("vdc.id", ondelete="CASCADE"), primary_key=True))
    node_id: int = Field(sa_column=Column(Integer, ForeignKey("node.id", ondelete="CASCADE"), primary_key=True, index=True))


class VdcSelector(SQLModel, table=True):
    """A rule adding nodes to a VDC: kind is tag, rack, resource_class or gpu_model."""

    __tablename__ = "vdc_selector"
    __table_args__ = (UniqueConstraint("vdc_id", "kind", "value"),)

    id: int | None = Field(default=None, primary_key=True)
    vdc_id: int = Field(sa_column=Column(Integer, ForeignKey("vdc.id", ondelete="CASCADE"), nullable=False, index=True))
    kind: str = Field(max_length=16)
    value: str = Field(max_length=128)


class VdcTenant(SQLModel, table=True):
    """A VDC granted to a tenant, with that tenant's own quotas inside it."""

    __tablename__ = "vdc_tenant"

    vdc_id: int = Field(sa_column=Column(Integer, ForeignKey("vdc.id", ondelete="CASCADE"), primary_key=True))
    tenant_id: int = Field(sa_column=Column(Integer, ForeignKey("tenant.id", ondelete="RESTRICT"), primary_key=True, index=True))
    max_nodes: int | None = Field(default=None, ge=0)
    max_gpus: int | None = Field(default=None, ge=0)
    max_gpu_hours: int | None = Field(default=None, ge=0)
    budget: Decimal | None = Field(default=None, sa_column=Column(ExactNumeric(20, 6)))  # exact on SQLite too (migration 0010)


class Lease(SQLModel, table=True):
    """Tenant `tenant_id` holds node `node_id` through VDC `vdc_id` over [starts_at, ends_at).

    `ends_at` None means the lease is open. Overlapping leases of one node are refused by the
    database itself (see migration 0002)."""

    __table_args__ = (CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="ck_lease_interval"),)

    __tablename__ = "lease"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(sa_column=Column(Integer, ForeignKey("tenant.id", ondelete="RESTRICT"), nullable=False, index=True))
    node_id: int = Field(sa_column=Column(Integer, ForeignKey("node.id", ondelete="RESTRICT"), nullable=False, index=True))
    vdc_id: int | None = Field(sa_column=Column(Integer, ForeignKey("vdc.id", ondelete="SET NULL"), nullable=True))
    starts_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    ends_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    note: str = Field(default="", max_length=500)


class GpuInstanceLease(SQLModel, table=True):
    """Tenant `tenant_id` holds one MIG instance of `profile` on GPU `gpu_index` of node `node_id`
    through VDC `vdc_id` over [starts_at, ends_at) (`ends_at` None: open).

    The instances on one GPU fit its compute slices at every instant and never overlap a whole-node
    lease of the node: checked by `fleet.instance_leases` under the node row's lock.

    `gpu_model`, `gpu_uuid` and `node_gpus` are the GPU's model and UUID and the node's number of
    GPUs when the lease was made: metering, carbon and efficiency read them from here, so a GPU row
    removed or replaced later (an inventory re-sync, an admin's edit) never changes what the lease
    was billed for."""

    __tablename__ = "gpu_instance_lease"
    __table_args__ = (
        CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="ck_gpu_instance_lease_interval"),
        CheckConstraint("gpu_index >= 0", name="ck_gpu_instance_lease_gpu_index"),
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(sa_column=Column(Integer, ForeignKey("tenant.id", ondelete="RESTRICT"), nullable=False, index=True))
    node_id: int = Field(sa_column=Column(Integer, ForeignKey("node.id", ondelete="RESTRICT"), nullable=False, index=True))
    vdc_id: int | None = Field(sa_column=Column(Integer, ForeignKey("vdc.id", ondelete="SET NULL"), nullable=True))
    gpu_index: int = Field(ge=0)
    profile: str = Field(max_length=32)
    gpu_model: str = Field(max_length=128)
    gpu_uuid: str | None = Field(default=None, max_length=64)
    node_gpus: int = Field(ge=1)
    starts_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    ends_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    note: str = Field(default="", max_length=500)
