"""Collector tables: what the scheduler persists from collectors' samples.

- `collector_worker`: live worker replicas (heartbeats), to split targets evenly between them.
- `collector_target_state`: per (collector, target) up / last success / last error, and the
  lease that shards targets between worker replicas (owner + expiry, taken with
  `FOR UPDATE SKIP LOCKED` on PostgreSQL).
- `health_snapshot`: the latest reading per (entity, metric, labels) — what the console and
  the API show as a node's or GPU's health now.
- `rollup_5m`: 5-minute aggregates of a few chart series, for when no Prometheus is configured.
- `fleet_power_5m`: the whole fleet's power per closed 5-minute bucket, kept from `rollup_5m`
  (collectors.fleet_power: the admin's fleet chart reads 288 rows, not 2.9 M).
- `lease_utilisation_day`, `utilisation_sealed`: GPU utilisation summed per whole-node lease and
  UTC day, and how far into each day those sums reach (collectors.utilisation_days).
- `node_energy_hour`: kWh per node-hour (metering's energy input), from the BMC's energy
  counter where it has one (Redfish `EnergykWh`), else integrated from its watts; `method` says
  which, `source` which collector's figure it is (one per node-hour, from `node_energy_source_hour`).
- `node_energy_source_hour`: the same per collector (ipmi, redfish), for nodes two sources read.
- `bmc_log_cursor`: per node and BMC log, the newest entry already stored as a node event.
- `gpu_energy_hour`: kWh per GPU-hour from the GPU exporters' energy counters.
- `gpu_xid_event`: each new XID error a GPU exporter reported (the node page's XID timeline).
- `k8s_allocation`: pod resource requests as intervals per namespace (metering's Kubernetes input).
- `opencost_allocation`: OpenCost's own figures per namespace and window (for reconciliation).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

# Loads the tables this module's foreign keys name: a flush sorts tables by those keys.
import fleet.models  # noqa: F401
from kiln.db import UTCDateTime
from kiln.types import ExactNumeric

# Billing inputs are exact on SQLite too (integer micro-units there, NUMERIC on PostgreSQL).
QUANTITY = ExactNumeric(24, 6)
COST = ExactNumeric(18, 6)


class CollectorTargetState(SQLModel, table=True):
    """Whether one target of one collector answers, since when, and which worker polls it."""

    __tablename__ = "collector_target_state"
    __table_args__ = (UniqueConstraint("collector", "target"),)

    id: int | None = Field(default=None, primary_key=True)
    collector: str = Field(max_length=32)
    target: str = Field(max_length=255)
    up: bool = Field(default=False)
    last_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_success_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=2000)
    consecutive_failures: int = Field(default=0)
    # series the last collection left out, by reason ({"blank value …": 3}); {} when none
    skipped: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}"))
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class HealthSnapshot(SQLModel, table=True):
    """The latest value of one series (entity + metric + labels)."""

    __tablename__ = "health_snapshot"
    __table_args__ = (UniqueConstraint("entity", "metric", "labels_key"),)

    id: int | None = Field(default=None, primary_key=True)
    entity: str = Field(max_length=255, index=True)  # node name or GPU UUID
    node_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("node.id", ondelete="CASCADE"), nullable=True, index=True)
    )
    source: str = Field(max_length=32)
    metric: str = Field(max_length=128)
    labels_key: str = Field(max_length=512)  # sorted `k=v` pairs joined by ","; "" for none
    labels: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    value: float | None = Field(default=None)  # NaN is stored as NULL
    unit: str = Field(max_length=32)
    state: int | None = Field(default=None)  # 0 nominal, 1 warning, 2 critical
    observed_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class Rollup5m(SQLModel, table=True):
    """Count/sum/min/max of one chart series over one 5-minute bucket.

    On PostgreSQL the table is partitioned by month on `bucket` (migration 0019, kiln.partitions):
    its primary key there is (id, bucket), and nothing may refer to it by foreign key."""

    __tablename__ = "rollup_5m"
    __table_args__ = (
        UniqueConstraint("entity", "metric", "bucket"),
        # Covering one metric's buckets over a range for every entity (fleet-wide charts).
        Index("ix_rollup_5m_metric_bucket", "metric", "bucket", "entity", "count", "sum"),
    )

    id: int | None = Field(default=None, primary_key=True)
    entity: str = Field(max_length=255)
    metric: str = Field(max_length=128)
    bucket: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    count: int = Field(default=0)
    sum: float = Field(default=0.0)
    min: float = Field(default=0.0)
    max: float = Field(default=0.0)


class FleetPower5m(SQLModel, table=True):
    """The sum over every enrolled node of its mean DCMI power in one closed 5-minute bucket
    (collectors.fleet_power); `nodes` counts the node series summed, 0 for a bucket without any."""

    __tablename__ = "fleet_power_5m"

    bucket: datetime = Field(sa_type=UTCDateTime, primary_key=True)
    watts: float = Field(default=0.0)
    nodes: int = Field(default=0)


class LeaseUtilisationDay(SQLModel, table=True):
    """One whole-node lease's GPU utilisation samples of one UTC day, summed: the microseconds they
    stand for (GPU-microseconds measured) and those × mean utilisation % (used, rounded per sample), over the samples
    before the day's `utilisation_sealed.through` (collectors.utilisation_days)."""

    __tablename__ = "lease_utilisation_day"

    day: date = Field(primary_key=True)
    lease_id: int = Field(primary_key=True)
    measured_micros: int = Field(default=0, sa_type=BigInteger)
    used_micro_percent: int = Field(default=0, sa_type=BigInteger)


class UtilisationSealed(SQLModel, table=True):
    """How far one UTC day's `lease_utilisation_day` rows reach: every lease's samples in
    [day, through) are summed there (`through` is at most the next midnight)."""

    __tablename__ = "utilisation_sealed"

    day: date = Field(primary_key=True)
    through: datetime = Field(sa_type=UTCDateTime)


ENERGY_METHODS = ("watts", "counter", "mixed")  # node_energy_hour.method


class NodeEnergyHour(SQLModel, table=True):
    """Energy one node drew in one hour: its BMC energy counter's increase (`method` counter),
    its power readings integrated (watts), or both in parts of the hour (mixed)."""

    __tablename__ = "node_energy_hour"
    __table_args__ = (UniqueConstraint("node_id", "hour"),)

    id: int | None = Field(default=None, primary_key=True)
    node_id: int = Field(sa_column=Column(Integer, ForeignKey("node.id", ondelete="CASCADE"), nullable=False, index=True))
    hour: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    kwh: Decimal = Field(default=Decimal(0), sa_column=Column(ExactNumeric(18, 6), nullable=False))
    covered_seconds: int = Field(default=0)  # how much of the hour the readings cover
    method: str = Field(default="watts", max_length=8, sa_column_kwargs={"server_default": "watts"})
    source: str | None = Field(default=None, max_length=32)  # the collector: ipmi | redfish; None: before 0020


class NodeEnergySourceHour(SQLModel, table=True):
    """One collector's figure of the energy a node drew in one hour (as NodeEnergyHour); a node
    whose BMC two collectors read has two, and node_energy_hour holds one of them
    (collectors/store.py, `choose_energy_source`)."""

    __tablename__ = "node_energy_source_hour"
    __table_args__ = (UniqueConstraint("node_id", "hour", "source"),)

    id: int | None = Field(default=None, primary_key=True)
    node_id: int = Field(sa_column=Column(Integer, ForeignKey("node.id", ondelete="CASCADE"), nullable=False, index=True))
    hour: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    source: str = Field(max_length=32)
    kwh: Decimal = Field(default=Decimal(0), sa_column=Column(ExactNumeric(18, 6), nullable=False))
    covered_seconds: int = Field(default=0)
    method: str = Field(default="watts", max_length=8)


class BmcLogCursor(SQLModel, table=True):
    """The newest entry of one BMC log (a Redfish LogService) already stored as a node event."""

    __tablename__ = "bmc_log_cursor"

    node_id: int = Field(sa_column=Column(Integer, ForeignKey("node.id", ondelete="CASCADE"), primary_key=True))
    log: str = Field(max_length=255, primary_key=True)  # the LogService's @odata.id
    entry: str = Field(max_length=255)  # the newest stored LogEntry's @odata.id
    created: str = Field(default="", max_length=64)  # its Created, as the BMC wrote it


class GpuEnergyHour(SQLModel, table=True):
    """Energy one GPU drew in one hour, from its exporter's energy counter (DCGM
    `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, AMD `gpu_energy_consumed`); `entity` is the GPU's
    UUID or serial (a MIG GPU's own, never an instance's: the counter is the whole GPU's)."""

    __tablename__ = "gpu_energy_hour"
    __table_args__ = (UniqueConstraint("entity", "hour"),)

    id: int | None = Field(default=None, primary_key=True)
    entity: str = Field(max_length=255)
    node_id: int | None = Field(default=None, sa_column=Column(
        Integer, ForeignKey("node.id", ondelete="SET NULL"), nullable=True, index=True))
    hour: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    kwh: Decimal = Field(default=Decimal(0), sa_column=Column(ExactNumeric(18, 6), nullable=False))
    covered_seconds: int = Field(default=0)  # how much of the hour the readings cover


class GpuXidEvent(SQLModel, table=True):
    """An XID error of one GPU: the exporter's last-XID field changed to `code` at `at` (the poll
    that saw it; dcgm-exporter reports the last XID, not when it happened)."""

    __tablename__ = "gpu_xid_event"

    id: int | None = Field(default=None, primary_key=True)
    entity: str = Field(max_length=255, index=True)  # the GPU's UUID
    node_id: int | None = Field(default=None, sa_column=Column(
        Integer, ForeignKey("node.id", ondelete="CASCADE"), nullable=True, index=True))
    at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    code: int = Field()


class K8sAllocation(SQLModel, table=True):
    """One pod's request of one resource, as an interval (end NULL while it runs)."""

    __tablename__ = "k8s_allocation"
    __table_args__ = (UniqueConstraint("pod_uid", "resource"),)

    id: int | None = Field(default=None, primary_key=True)
    namespace: str = Field(max_length=253, index=True)
    tenant_slug: str | None = Field(default=None, max_length=63, index=True)
    pod: str = Field(max_length=253)
    pod_uid: str = Field(max_length=64)
    node_name: str | None = Field(default=None, max_length=253)
    resource: str = Field(max_length=64)  # nvidia.com/gpu, amd.com/gpu, cpu, memory
    quantity: Decimal = Field(sa_column=Column(QUANTITY, nullable=False))  # GPUs, cores, bytes
    starts_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    ends_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class OpenCostAllocation(SQLModel, table=True):
    """OpenCost's allocation of one namespace over one window, as OpenCost reported it."""

    __tablename__ = "opencost_allocation"
    __table_args__ = (UniqueConstraint("namespace", "window_start", "window_end"),)

    id: int | None = Field(default=None, primary_key=True)
    namespace: str = Field(max_length=253)
    window_start: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    window_end: datetime = Field(sa_type=UTCDateTime, nullable=False)
    # None where OpenCost wrote null (a NaN or infinite value) or, for the adjustment, load-balancer
    # and external costs, where an older OpenCost did not report them
    cpu_core_hours: Decimal | None = Field(default=None, sa_column=Column(QUANTITY, nullable=True))
    gpu_hours: Decimal | None = Field(default=None, sa_column=Column(QUANTITY, nullable=True))
    ram_byte_hours: Decimal | None = Field(default=None, sa_column=Column(ExactNumeric(30, 6), nullable=True))
    cpu_cost: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    gpu_cost: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    ram_cost: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    pv_cost: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    network_cost: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    load_balancer_cost: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    shared_cost: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    external_cost: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    cpu_cost_adjustment: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    gpu_cost_adjustment: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    ram_cost_adjustment: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    pv_cost_adjustment: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    network_cost_adjustment: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    load_balancer_cost_adjustment: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    total_cost: Decimal | None = Field(default=None, sa_column=Column(COST, nullable=True))
    total_efficiency: float | None = Field(default=None)


class CollectorWorker(SQLModel, table=True):
    """A running `kiln worker` replica; live ones (seen within a lease) share the targets."""

    __tablename__ = "collector_worker"

    owner: str = Field(max_length=128, primary_key=True)
    started_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    last_seen_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
