"""Hourly usage records, built from the tenancy timeline and the collectors' tables.

One row per (tenant, resource, SKU, hour, source) — the table's unique key — so rebuilding a
range of hours deletes and rewrites exactly those rows and never duplicates one (a whole month on
PostgreSQL: written into a new table that replaces the month's partition, `kiln.partitions.stage_month`).
Sources:

- `lease`: a node leased to a tenant gives `node-hour:<resource_class>` for the node and
  `gpu-hour:<model>` for every GPU in it (resource id = node name). A lease starting or ending
  mid-hour counts the exact fraction of the hour; an open lease counts up to now. A GPU
  instance lease gives `gpu-hour:<model>:<profile>`, split with the node's pods as a MIG pod
  would be (`metering.instance_usage`).
- `k8s`: pod requests (`k8s_allocation`) per namespace, attributed to the namespace's tenant
  label: GPU-hours by the node's GPU model, CPU core-hours, RAM GiB-hours (resource id =
  `k8s:<namespace>`). Time a pod spends on a node that is leased whole is not counted again:
  the lease holder already pays for the node.
- `energy`: a node's metered kWh per hour goes to the tenant leasing it and, on a shared
  Kubernetes node, to the namespaces by their share of its GPUs, CPUs and memory
  (`metering.energy_usage`, node by node beside the Kubernetes counts). What nobody held stays
  unattributed (idle).

Every row keeps its amount exactly, as `quantity_parts` (an integer: quantity × 3,600,000,000,
i.e. GPU-microseconds for GPU-hours), beside `quantity` (the same to 6 decimal places, for
display). Sums always add `quantity_parts` and convert once (`summed`), so a month of 20-minute
hours adds up to the exact total instead of drifting by 0.000001 per rounded hour.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from itertools import groupby

from sqlalchemy import delete, func, text
from sqlmodel import Session, col, or_, select

from collectors.models import K8sAllocation, NodeEnergyHour
from fleet.models import Gpu, Node
from fleet.tenancy_models import Lease
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.models import Tenant
from kiln.partitions import stage_month, swap_month
from kiln.types import exact_sum, sum_value
from collectors import mig_profiles
from metering import skus
from metering.energy_shares import CPU, GPU, MEMORY, NodeHourClaims
from metering.energy_usage import energy_usage
from metering.gpu_shares import Pool, SharedGpuHours, oversubscribed
from metering.instance_usage import InstanceClaim, InstanceKey, instance_claims
from metering.models import NOT_WHOLE_NODE_GPUS, UsageRecord
from metering.usage_io import copies, stream_rows, write_rows
from metering.intervals import HourlyTotals, Number, exact
from metering.money import quantity_from_parts
from metering.periods import split_by_hour

SOURCE_LEASE, SOURCE_K8S, SOURCE_ENERGY = "lease", "k8s", "energy"
SOURCES = (SOURCE_LEASE, SOURCE_K8S, SOURCE_ENERGY)
BYTES_PER_GIB = Decimal(2**30)
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")


@dataclass
class _Held:
    tenant_id: int
    vdc_id: int | None
    start: datetime
    end: datetime


def _clip(start: datetime, end: datetime | None, lo: datetime, hi: datetime) -> tuple[datetime, datetime] | None:
    a, b = max(start, lo), min(end or hi, hi)
    return (a, b) if b > a else None


def _subtract(start: datetime, end: datetime, holes: Iterable[_Held]) -> list[tuple[datetime, datetime]]:
    pieces = [(start, end)]
    for hole in holes:
        pieces = [p for a, b in pieces for p in ((a, min(b, hole.start)), (max(a, hole.end), b)) if p[1] > p[0]]
    return pieces


def _gpu_models(session: Session) -> dict[int, dict[str, int]]:
    models: dict[int, dict[str, int]] = defaultdict(dict)
    for node_id, model, count in session.exec(select(Gpu.node_id, Gpu.model, func.count()).group_by(Gpu.node_id, Gpu.model)).all():
        models[node_id][model] = count
    return models


def _leases(session: Session, start: datetime, end: datetime) -> dict[int, list[_Held]]:
    held: dict[int, list[_Held]] = defaultdict(list)
    statement = select(Lease.node_id, Lease.tenant_id, Lease.vdc_id, Lease.starts_at, Lease.ends_at).where(
        col(Lease.starts_at) < end, or_(col(Lease.ends_at).is_(None), col(Lease.ends_at) > start))
    for node_id, tenant_id, vdc_id, starts_at, ends_at in session.exec(statement).all():
        clipped = _clip(starts_at, ends_at, start, end)
        if clipped:
            held[node_id].append(_Held(tenant_id, vdc_id, *clipped))
    return held


def lease_usage(held: dict[int, list[_Held]], nodes: dict[int, tuple[str, str | None]], gpus: dict[int, dict[str, int]],
                origin: datetime) -> HourlyTotals:
    """Node-hours and GPU-hours of leased nodes, split exactly at hour boundaries."""
    totals = HourlyTotals(origin)
    for node_id, intervals in held.items():
        name, resource_class = nodes[node_id]
        node_sku = skus.node_hour(resource_class)
        gpu_skus = [(skus.gpu_hour(model), count) for model, count in sorted(gpus.get(node_id, {}).items())]
        for h in intervals:
            totals.add((h.tenant_id, name, node_sku), h.start, h.end, 1, h.vdc_id)
            for sku, count in gpu_skus:
                totals.add((h.tenant_id, name, sku), h.start, h.end, count, h.vdc_id)
    return totals


def _k8s_sku(resource: str, model: str | None, quantity: Decimal) -> tuple[str | None, Decimal]:
    if resource in GPU_RESOURCES:
        return skus.gpu_hour(model or resource), quantity
    if mig_profiles.is_mig_resource(resource):
        return skus.gpu_hour(model or "MIG", mig_profiles.profile_of(resource)), quantity
    if resource == "cpu":
        return skus.CPU_CORE_HOUR, quantity
    if resource == "memory":
        return skus.RAM_GIB_HOUR, quantity / BYTES_PER_GIB
    return None, quantity


def _main_model(models: dict[str, int]) -> str | None:
    return max(models, key=models.get) if models else None


def _is_gpu(resource: str) -> bool:
    return resource in GPU_RESOURCES or mig_profiles.is_mig_resource(resource)


def _shared_pool(node_id: int | None, rows: list[tuple], gpus: dict[int, dict[str, int]]) -> Pool | None:
    """The node's GPU pool if its GPUs are shared (any MIG request, or whole-GPU requests beyond
    its GPUs at some instant: time-slicing); None keeps the per-interval fast path."""
    if node_id is None:
        return None
    whole: list[tuple[datetime, datetime, int]] = []
    mig = False
    for _, _, _, resource, quantity, starts_at, ends_at in rows:
        if mig_profiles.is_mig_resource(resource):
            mig = True
        elif resource in GPU_RESOURCES and gpus.get(node_id):
            whole.append((starts_at, ends_at, int(quantity)))
    if mig or oversubscribed(whole, sum(gpus.get(node_id, {}).values())):
        return _pool(gpus.get(node_id, {}))
    return None


def _pool(models: dict[str, int]) -> Pool:
    model = _main_model(models)
    return Pool(sum(models.values()) or None, mig_profiles.total_slices(model) if model else mig_profiles.DEFAULT_TOTAL_SLICES)


def _instance_pool(models: dict[str, int], claims: list[InstanceClaim]) -> Pool:
    """The pool of a node where GPU instance leases claim: its GPUs now, each of the slices of the
    GPU model the leases recorded, so a GPU row removed or replaced since leaves their compute
    fractions (and bills) as they were."""
    leased = Counter(claim.gpu_model for claim in claims).most_common(1)[0][0]
    return Pool(sum(models.values()) or None, mig_profiles.total_slices(leased))


def _claim_slices(resource: str, quantity: Decimal, pool: Pool) -> int:
    if mig_profiles.is_mig_resource(resource):
        return int(quantity) * min(mig_profiles.profile_slices(mig_profiles.profile_of(resource)), pool.slices)
    return int(quantity) * pool.slices


@dataclass
class _NodeRequests:
    """Adds one node's pods (and GPU instance leases) to the period's totals (`node`)."""

    held: dict[int, list[_Held]]
    gpus: dict[int, dict[str, int]]
    metered: set[int]
    instances: dict[int, list[InstanceClaim]]
    leased: HourlyTotals
    totals: HourlyTotals
    tenants: dict[str, int]
    priced: dict[tuple, tuple[str | None, Number]] = field(default_factory=dict)  # (resource, node, quantity) → SKU, exact quantity

    def node(self, node_id: int | None, rows: list[tuple]) -> dict[datetime, NodeHourClaims]:
        """Count the node's rows; returns what each tenant requested of it per hour if it is metered."""
        claims: dict[datetime, NodeHourClaims] = defaultdict(NodeHourClaims)
        pool = (_instance_pool(self.gpus.get(node_id, {}), self.instances[node_id]) if node_id in self.instances
                else _shared_pool(node_id, rows, self.gpus))
        shared = SharedGpuHours({node_id: pool}) if pool else None
        for claim in self.instances.get(node_id, ()):  # claimed exactly as a pod requesting the same MIG profile would
            shared.add(node_id, claim.key, claim.start, claim.end, _claim_slices(claim.resource, Decimal(1), pool))
        metered = node_id in self.metered
        for namespace, slug, _, resource, quantity, starts_at, ends_at in rows:
            known = self.priced.get((resource, node_id, quantity))
            if known is None:
                sku, amount = _k8s_sku(resource, _main_model(self.gpus.get(node_id, {})), quantity)
                known = self.priced[(resource, node_id, quantity)] = (sku, exact(amount) if sku else amount)
            sku, per_micro = known
            if sku is None:
                continue
            tenant_id = self.tenants[slug]
            key = (tenant_id, f"k8s:{namespace}", sku)
            for a, b in _subtract(starts_at, ends_at, self.held[node_id]) if node_id in self.held else [(starts_at, ends_at)]:
                if shared and _is_gpu(resource):
                    shared.add(node_id, key, a, b, _claim_slices(resource, quantity, pool))
                    continue
                self.totals.add(key, a, b, per_micro)
                kind = GPU if resource in GPU_RESOURCES else resource
                if metered and kind in (GPU, CPU, MEMORY):
                    for hour, micros in split_by_hour(a, b):
                        claims[hour].requests[kind][(tenant_id, namespace, None)] += int(quantity * micros)
        for _, hour, key, parts in shared.split() if shared else ():
            if isinstance(key, InstanceKey):
                self.leased.add_weight((key.tenant_id, key.resource_id, key.sku), hour, parts, key.vdc_id)
                energy_key = (key.tenant_id, None, key.vdc_id)
            else:
                self.totals.add_weight(key, hour, parts)
                energy_key = (key[0], key[1].removeprefix("k8s:"), None)
            if metered:
                claims[hour].requests[GPU][energy_key] += parts
        return claims if metered else {}


def k8s_usage(
    session: Session, start: datetime, end: datetime, held: dict[int, list[_Held]], gpus: dict[int, dict[str, int]],
    metered: set[int], instances: dict[int, list[InstanceClaim]], leased: HourlyTotals, totals: HourlyTotals,
) -> Iterator[tuple[int, dict[datetime, NodeHourClaims]]]:
    """Request-hours per namespace → tenant, outside leased time, added to `totals` node by node as
    this is read; yields (node id, what each tenant requested of it per hour) in node id order, for
    `metering.energy_usage` ({} for a node without metered energy). Pods on nodes Kiln does not
    know are counted last, without a node.

    GPUs of nodes with MIG requests, time-sliced GPUs or GPU instance leases (`instances`) are split
    per hour by `metering.gpu_shares`; a MIG instance is `gpu-hour:<model>:<profile>`, counted in
    GPU-hours (its compute fraction). Instance leases' shares are added to `leased`."""
    tenants = dict(session.exec(select(Tenant.slug, Tenant.id)).all())
    statement = select(K8sAllocation.namespace, K8sAllocation.tenant_slug, Node.id, K8sAllocation.resource,
                       K8sAllocation.quantity, K8sAllocation.starts_at, K8sAllocation.ends_at).join(
        Node, col(Node.name) == K8sAllocation.node_name, isouter=True).where(
        col(K8sAllocation.starts_at) < end, or_(col(K8sAllocation.ends_at).is_(None), col(K8sAllocation.ends_at) > start)
    ).order_by(col(Node.id).nulls_last())
    # streamed node by node (a server-side cursor on PostgreSQL): memory holds one node's pods and
    # claims, not the month's millions of rows; whether a node's GPUs are shared depends on its pods only
    rows = ((namespace, slug, node_id, resource, quantity, *clipped)
            for namespace, slug, node_id, resource, quantity, starts_at, ends_at in stream_rows(session.connection(), statement)
            if quantity > 0 and tenants.get(slug or "") is not None and (clipped := _clip(starts_at, ends_at, start, end)))
    count = _NodeRequests(held, gpus, metered, instances, leased, totals, tenants)
    waiting = sorted(instances)  # nodes with GPU instance leases, some perhaps without pods
    for node_id, group in groupby(rows, key=lambda row: row[2]):
        while waiting and (node_id is None or waiting[0] < node_id):
            only_leased = waiting.pop(0)
            yield only_leased, count.node(only_leased, [])
        if waiting and waiting[0] == node_id:
            waiting.pop(0)
        claims = count.node(node_id, list(group))
        if node_id is not None:
            yield node_id, claims
    for only_leased in waiting:
        yield only_leased, count.node(only_leased, [])


def build_usage(session: Session, start: datetime, end: datetime, now: datetime | None = None) -> dict[str, int]:
    """Rebuild every usage record with an hour in [start, end) from all sources; rows written per source.

    Time after `now` is not counted (an open lease counts up to now); re-running replaces the
    same rows, so it is safe to run as often as usage arrives. The bills run is its one caller in
    the appliance: it keeps the per-day sums (`metering.usage_days`) in the same transaction.
    """
    stop = min(end, now or utcnow())
    connection = session.connection()
    # a whole month on PostgreSQL: written into a fresh table that replaces the month's partition
    staged = stage_month(connection, UsageRecord.__tablename__, start, end) if copies(connection) else None
    if staged is None:
        session.execute(delete(UsageRecord).where(col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end))
    written = {source: 0 for source in SOURCES}
    if stop > start:
        held = _leases(session, start, stop)
        nodes = {node_id: (name, rc) for node_id, name, rc in session.exec(select(Node.id, Node.name, Node.resource_class)).all()}
        gpus = _gpu_models(session)
        metered = set(session.exec(select(NodeEnergyHour.node_id).where(
            col(NodeEnergyHour.hour) >= start, col(NodeEnergyHour.hour) < stop).distinct()).all())
        leased, k8s = lease_usage(held, nodes, gpus, start), HourlyTotals(start)
        # node by node: the Kubernetes counts (and instance leases' shares, added to `leased`) as
        # the energy split reads each node's claims; the energy rows written as they are made
        claims = k8s_usage(session, start, stop, held, gpus, metered, instance_claims(session, start, stop), leased, k8s)
        written[SOURCE_ENERGY] = energy_usage(session, start, stop, held, nodes, gpus, claims,
                                              lambda rows: write_rows(session, SOURCE_ENERGY, rows, into=staged))
        written[SOURCE_LEASE] = write_rows(session, SOURCE_LEASE, leased, into=staged)
        written[SOURCE_K8S] = write_rows(session, SOURCE_K8S, k8s, into=staged)
    if staged is not None:
        swap_month(connection, UsageRecord.__tablename__, start, staged)
    return written


def list_usage(
    session: Session, principal: Principal, start: datetime, end: datetime, *, tenant_id: int | None = None,
    sku: str | None = None, source: str | None = None, resource_id: str | None = None, limit: int = 1000, offset: int = 0,
) -> list[UsageRecord]:
    """Usage rows of the caller's tenants with an hour in [start, end), by hour, resource and SKU."""
    statement = select(UsageRecord).where(col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end)
    statement = principal.scope(statement, UsageRecord.tenant_id)
    for column, value in ((UsageRecord.tenant_id, tenant_id), (UsageRecord.sku, sku), (UsageRecord.source, source),
                          (UsageRecord.resource_id, resource_id)):
        if value is not None:
            statement = statement.where(column == value)
    statement = statement.order_by(UsageRecord.hour, UsageRecord.tenant_id, UsageRecord.resource_id, UsageRecord.sku)
    return list(session.exec(statement.offset(offset).limit(limit)).all())


def usage_totals(session: Session, principal: Principal, start: datetime, end: datetime, *,
                 family: str | None = None, tenant_id: int | None = None,
                 whole_node_leases: bool = True) -> list[tuple[int, str, str, str, Decimal]]:
    """(tenant_id, sku, unit, source, total quantity) of the caller's tenants (or only `tenant_id`)
    over [start, end) (only SKUs of `family`, e.g. `skus.GPU_HOUR`, when given; without whole-node
    leases' records when `whole_node_leases` is false: read from their own small index)."""
    statement = select(UsageRecord.tenant_id, UsageRecord.sku, UsageRecord.unit, UsageRecord.source, parts_sum())
    statement = principal.scope(statement.where(col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end), UsageRecord.tenant_id)
    if not whole_node_leases:  # the index's own text, constants and all, so that PostgreSQL matches it
        statement = statement.where(text(NOT_WHOLE_NODE_GPUS))
    if tenant_id is not None:
        statement = statement.where(UsageRecord.tenant_id == tenant_id)
    if family is not None:
        statement = statement.where(col(UsageRecord.sku).startswith(f"{family}:"))
    statement = statement.group_by(UsageRecord.tenant_id, UsageRecord.sku, UsageRecord.unit, UsageRecord.source)
    return [(t, s, u, src, summed(q)) for t, s, u, src, q in session.exec(statement.order_by(UsageRecord.tenant_id, UsageRecord.sku)).all()]


def parts_sum() -> exact_sum:
    """SQL: the exact sum of the selected rows' `quantity_parts` (never overflows on SQLite);
    read it with `parts_of` or `summed`."""
    return exact_sum(UsageRecord.quantity_parts)


def parts_of(value: object) -> int:
    """A `parts_sum` result as an int (0 when there were no rows)."""
    return sum_value(value) or 0


def summed(value: object) -> Decimal:
    """A `parts_sum` result as a quantity, rounded once (half-even, 6 decimal places)."""
    return quantity_from_parts(parts_of(value))
