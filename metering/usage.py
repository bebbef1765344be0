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
- `energy`: a node's metered kWh per hour (`node_energy_hour`) goes to the tenant leasing it,
  pro rata to the part of the hour leased (resource id = node name); on a shared Kubernetes node
  the rest goes by each namespace's share of the node's GPUs (their own energy, where GPU
  counters measure it) and of its CPUs and memory (`metering.energy_shares`; resource id =
  `<node>/k8s:<namespace>`). What nobody held stays unattributed (idle).

Every row keeps its amount exactly, as `quantity_parts` (an integer: quantity × 3,600,000,000,
i.e. GPU-microseconds for GPU-hours), beside `quantity` (the same to 6 decimal places, for
display). Sums always add `quantity_parts` and convert once (`summed`), so a month of 20-minute
hours adds up to the exact total instead of drifting by 0.000001 per rounded hour.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import groupby

from sqlalchemy import delete, func
from sqlmodel import Session, col, or_, select

from collectors.models import GpuEnergyHour, K8sAllocation, NodeEnergyHour
from fleet.models import Gpu, Node
from fleet.tenancy_models import Lease
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.models import Tenant
from kiln.partitions import stage_month, swap_month
from kiln.types import exact_sum, sum_value
from collectors import mig_profiles
from metering import skus
from metering.energy_shares import CPU, GPU, MEMORY, NodeCapacity, NodeHourClaims, split_node_energy
from metering.gpu_placement import HourCursor, gpu_holders, placed_gpus
from metering.gpu_shares import Pool, SharedGpuHours, oversubscribed
from metering.instance_usage import InstanceClaim, InstanceKey, instance_claims
from metering.models import UsageRecord
from metering.usage_io import STREAM_ROWS, copies, stream_rows, write_rows
from metering.intervals import HourlyTotals, Number, exact
from metering.money import PARTS_PER_UNIT, quantity_from_parts
from metering.periods import HOUR, split_by_hour

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


def _shared_pools(rows: list[tuple], node_ids: dict[str, int], gpus: dict[int, dict[str, int]]) -> dict[int, Pool]:
    """Nodes whose GPUs are shared (any MIG request, or whole-GPU requests beyond the node's GPUs
    at some instant: time-slicing) → their pool; the others keep the per-interval fast path."""
    mig_nodes: set[int] = set()
    whole: dict[int, list[tuple[datetime, datetime, int]]] = defaultdict(list)
    for _, _, node_name, resource, quantity, starts_at, ends_at in rows:
        node_id = node_ids.get(node_name or "")
        if node_id is None:
            continue
        if mig_profiles.is_mig_resource(resource):
            mig_nodes.add(node_id)
        elif resource in GPU_RESOURCES and gpus.get(node_id):
            whole[node_id].append((starts_at, ends_at or datetime.max.replace(tzinfo=starts_at.tzinfo), int(quantity)))
    shared = mig_nodes | {n for n, spans in whole.items() if oversubscribed(spans, sum(gpus[n].values()))}
    return {node_id: _pool(gpus.get(node_id, {})) for node_id in shared}


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


def _node_by_node(rows: Iterable[tuple], node_ids: dict[str, int], gpus: dict[int, dict[str, int]],
                  pools: dict[int, Pool]) -> Iterator[tuple]:
    """The rows (ordered by node name) again, each node's after its shared pool, if any, is added to `pools`
    (where its GPU instance leases already made one, that one is kept)."""
    for _, group in groupby(rows, key=lambda row: row[2]):
        node_rows = list(group)
        pools.update({n: pool for n, pool in _shared_pools(node_rows, node_ids, gpus).items() if n not in pools})
        yield from node_rows


def k8s_usage(
    session: Session, start: datetime, end: datetime, held: dict[int, list[_Held]], node_ids: dict[str, int],
    gpus: dict[int, dict[str, int]], metered: set[int], instances: dict[int, list[InstanceClaim]],
    leased: HourlyTotals,
) -> tuple[HourlyTotals, dict[tuple[int, datetime], NodeHourClaims]]:
    """Request-hours per namespace → tenant, outside leased time; what each tenant requested of each
    metered node per hour (for `energy_usage`).

    GPUs of nodes with MIG requests, time-sliced GPUs or GPU instance leases (`instances`) are split
    per hour by `metering.gpu_shares`; a MIG instance is `gpu-hour:<model>:<profile>`, counted in
    GPU-hours (its compute fraction). Instance leases' shares are added to `leased`."""
    totals = HourlyTotals(start)
    claims: dict[tuple[int, datetime], NodeHourClaims] = defaultdict(NodeHourClaims)
    tenants = dict(session.exec(select(Tenant.slug, Tenant.id)).all())
    statement = select(K8sAllocation.namespace, K8sAllocation.tenant_slug, K8sAllocation.node_name, K8sAllocation.resource,
                       K8sAllocation.quantity, K8sAllocation.starts_at, K8sAllocation.ends_at).where(
        col(K8sAllocation.starts_at) < end, or_(col(K8sAllocation.ends_at).is_(None), col(K8sAllocation.ends_at) > start)
    ).order_by(K8sAllocation.node_name)
    # streamed node by node (a server-side cursor on PostgreSQL): memory holds one node's pods,
    # not the month's millions of rows; whether a node's GPUs are shared depends on its pods only
    rows = (row for row in stream_rows(session.connection(), statement) if row[4] > 0 and tenants.get(row[1] or "") is not None)
    pools: dict[int, Pool] = {node_id: _instance_pool(gpus.get(node_id, {}), node_claims)
                              for node_id, node_claims in instances.items()}
    shared = SharedGpuHours(pools)
    for node_id, node_claims in instances.items():
        for claim in node_claims:  # claimed exactly as a pod requesting the same MIG profile would
            shared.add(node_id, claim.key, claim.start, claim.end, _claim_slices(claim.resource, Decimal(1), pools[node_id]))
    priced: dict[tuple, tuple[str | None, Number]] = {}  # (resource, node, quantity) → SKU, exact quantity
    for namespace, slug, node_name, resource, quantity, starts_at, ends_at in _node_by_node(rows, node_ids, gpus, pools):
        clipped = _clip(starts_at, ends_at, start, end)
        if clipped is None:
            continue
        tenant_id, node_id = tenants[slug], node_ids.get(node_name or "")
        known = priced.get((resource, node_id, quantity))
        if known is None:
            sku, amount = _k8s_sku(resource, _main_model(gpus.get(node_id, {})), quantity)
            known = priced[(resource, node_id, quantity)] = (sku, exact(amount) if sku else amount)
        sku, per_micro = known
        if sku is None:
            continue
        key = (tenant_id, f"k8s:{namespace}", sku)
        for a, b in _subtract(*clipped, held.get(node_id, [])) if node_id in held else [clipped]:
            if node_id in pools and _is_gpu(resource):
                shared.add(node_id, key, a, b, _claim_slices(resource, quantity, pools[node_id]))
                continue
            totals.add(key, a, b, per_micro)
            kind = GPU if resource in GPU_RESOURCES else resource
            if node_id in metered and kind in (GPU, CPU, MEMORY):
                for hour, micros in split_by_hour(a, b):
                    claims[(node_id, hour)].requests[kind][(tenant_id, namespace, None)] += int(quantity * micros)
    for node_id, hour, key, parts in shared.split():
        if isinstance(key, InstanceKey):
            leased.add_weight((key.tenant_id, key.resource_id, key.sku), hour, parts, key.vdc_id)
            energy_key = (key.tenant_id, None, key.vdc_id)
        else:
            totals.add_weight(key, hour, parts)
            energy_key = (key[0], key[1].removeprefix("k8s:"), None)
        if node_id in metered:
            claims[(node_id, hour)].requests[GPU][energy_key] += parts
    return totals, claims


def energy_resource_id(node: str, namespace: str | None = None) -> str:
    """An energy row's resource: the node, or for a Kubernetes namespace's share `<node>/k8s:<namespace>`."""
    return f"{node}/k8s:{namespace}" if namespace else node


def energy_place(resource_id: str) -> tuple[str, str | None]:
    """(node, namespace or None) of an energy row's resource (`energy_resource_id` reversed)."""
    node, _, namespace = resource_id.partition("/k8s:")
    return node, namespace or None


def _gpu_energy(session: Session, start: datetime, end: datetime) -> Iterator[tuple[datetime, dict[int, dict[str, int]]]]:
    """(hour, node → GPU → parts of kWh its own energy counter measured), in hour order."""
    statement = select(GpuEnergyHour.hour, GpuEnergyHour.node_id, GpuEnergyHour.entity, GpuEnergyHour.kwh).where(
        col(GpuEnergyHour.node_id).is_not(None), col(GpuEnergyHour.hour) >= start, col(GpuEnergyHour.hour) < end
    ).order_by(GpuEnergyHour.hour)
    for hour, rows in groupby(session.connection().execute(statement.execution_options(yield_per=STREAM_ROWS)),
                              key=lambda row: row[0]):
        out: dict[int, dict[str, int]] = defaultdict(dict)
        for _, node_id, entity, kwh in rows:
            out[node_id][entity] = int(Decimal(kwh) * PARTS_PER_UNIT)
        yield hour, out


def _capacities(session: Session, gpus: dict[int, dict[str, int]]) -> dict[int, NodeCapacity]:
    """Each node's GPUs, and its CPU cores and memory where its facts say (`cpu_cores`, `ram_mib`)."""
    out = {}
    for node_id, facts in session.exec(select(Node.id, Node.facts)).all():
        cores, ram_mib = (facts or {}).get("cpu_cores"), (facts or {}).get("ram_mib")
        out[node_id] = NodeCapacity(sum(gpus.get(node_id, {}).values()),
                                    int(cores) if isinstance(cores, int | float) and cores > 0 else None,
                                    int(ram_mib) * 2**20 if isinstance(ram_mib, int | float) and ram_mib > 0 else None)
    return out


def energy_usage(
    session: Session, start: datetime, end: datetime, held: dict[int, list[_Held]], nodes: dict[int, tuple[str, str | None]],
    gpus: dict[int, dict[str, int]], claims: dict[tuple[int, datetime], NodeHourClaims],
) -> HourlyTotals:
    """kWh per node-hour to the lease holders (pro rata), else to Kubernetes tenants by their GPU,
    CPU and memory shares (`metering.energy_shares`; each GPU's own energy to the namespaces the
    exporters saw on it, `metering.gpu_placement`), exactly: the rest is idle energy."""
    totals = HourlyTotals(start)
    capacities = _capacities(session, gpus)
    gpu_kwh, holders = HourCursor(_gpu_energy(session, start, end)), HourCursor(gpu_holders(session, start, end))
    statement = select(NodeEnergyHour.node_id, NodeEnergyHour.hour, NodeEnergyHour.kwh).where(
        col(NodeEnergyHour.hour) >= start, col(NodeEnergyHour.hour) < end).order_by(NodeEnergyHour.hour)
    for node_id, hour, kwh in session.exec(statement).all():
        name = nodes[node_id][0]
        hour_claims = claims.get((node_id, hour)) or NodeHourClaims()
        for h in held.get(node_id, []):
            for _, micros in split_by_hour(max(h.start, hour), min(h.end, hour + HOUR)):
                hour_claims.leased[(h.tenant_id, name, h.vdc_id)] += micros
        per_gpu = gpu_kwh.at(hour).get(node_id)
        placed = placed_gpus(per_gpu, holders.at(hour), hour_claims,
                             lambda tenant_id, ns: (tenant_id, energy_resource_id(name, ns), None)) if per_gpu else []
        requests = {kind: {(tenant_id, energy_resource_id(name, namespace), vdc_id): w
                           for (tenant_id, namespace, vdc_id), w in weights.items()}
                    for kind, weights in hour_claims.requests.items()}
        split = split_node_energy(int(Decimal(kwh) * PARTS_PER_UNIT), sum(per_gpu.values()) if per_gpu else None,
                                  NodeHourClaims(hour_claims.leased, requests), capacities[node_id], placed)
        for (tenant_id, resource_id, vdc_id), parts in split.items():
            if parts:
                totals.add_weight((tenant_id, resource_id, skus.KWH), hour, parts, vdc_id)
    return totals


def build_usage(session: Session, start: datetime, end: datetime, now: datetime | None = None) -> dict[str, int]:
    """Rebuild every usage record with an hour in [start, end) from all sources; rows written per source.

    Time after `now` is not counted (an open lease counts up to now); re-running replaces the
    same rows, so it is safe to run as often as usage arrives.
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
        leased = lease_usage(held, nodes, gpus, start)
        k8s, claims = k8s_usage(session, start, stop, held, {name: i for i, (name, _) in nodes.items()}, gpus, metered,
                                instance_claims(session, start, stop), leased)  # adds instance leases' shares to `leased`
        written[SOURCE_LEASE] = write_rows(session, SOURCE_LEASE, leased, into=staged)
        written[SOURCE_K8S] = write_rows(session, SOURCE_K8S, k8s, into=staged)
        energy = energy_usage(session, start, stop, held, nodes, gpus, claims)
        written[SOURCE_ENERGY] = write_rows(session, SOURCE_ENERGY, energy, into=staged)
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
                 family: str | None = None) -> list[tuple[int, str, str, str, Decimal]]:
    """(tenant_id, sku, unit, source, total quantity) of the caller's tenants over [start, end)
    (only SKUs of `family`, e.g. `skus.GPU_HOUR`, when given)."""
    statement = select(UsageRecord.tenant_id, UsageRecord.sku, UsageRecord.unit, UsageRecord.source, parts_sum())
    statement = principal.scope(statement.where(col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end), UsageRecord.tenant_id)
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
