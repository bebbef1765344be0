"""GPU efficiency per Kubernetes namespace (Kubecost's allocation view, by namespace).

The same definition as `metering.efficiency` (used ÷ measured, coverage = measured ÷ allocated,
each sample weighted by its real interval: `metering.efficiency.sample_micros`), with the namespace's own figures:

- *allocated* GPU-hours: its pods' GPU requests (`k8s_allocation`) × the time they ran in the
  window; a MIG instance counts its GPU's compute fraction (a `3g.40gb` of an H100 is 3/7 GPU);
- *measured* and *used* GPU-hours: the utilisation samples of the GPUs (and MIG instances) that
  dcgm-exporter or AMD's exporter labelled with the namespace (its pod held the device), kept
  per namespace by the collectors' store (`NAMESPACE_GPU_UTIL_ROLLUP`), MIG instances weighted
  by their compute fraction. On a time-sliced GPU the exporters report the GPU's values on each
  pod's series (dcgm-exporter#582/#587) and Kiln keeps one series per GPU and scrape, so only one
  of the sharing namespaces is measured per scrape: the others show a lower coverage, never a
  made-up efficiency.

Idle GPU-hours (measured − used) are priced as in `metering.allocation`: the GPU model's card at
the window's last hour, less the tenant's discount, rounded at the currency's minor unit.
Tenancy: a caller sees the namespaces of its tenants (`k8s_allocation.tenant_slug`); namespaces
mapped to no tenant are shown only to callers who see every tenant.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from sqlmodel import Session, col, or_, select

from collectors import mig_profiles
from collectors.models import K8sAllocation, Rollup5m
from collectors.store import NAMESPACE_GPU_UTIL_ROLLUP, split_namespace_entity
from collectors.utilisation_days import MAX_SAMPLE_INTERVAL
from fleet.models import Gpu, Node
from fleet.usage import MICROS_PER_HOUR
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.models import Tenant
from metering.allocation import MIN_COVERAGE, WASTE_BELOW, IdleFigures, idle_cost
from metering.bills import billing_currency, card_views, current_discounts
from metering.efficiency import PLACES, ZERO, add_samples
from metering.price_cards import cards_overlapping
from metering.usage import GPU_RESOURCES

PREFIXES_PER_QUERY = 200  # namespaces named in one query; more: read the metric's rows and filter here


class NamespaceEfficiencyRow(IdleFigures):
    """One namespace in the window: its tenant and its `IdleFigures` (idle cost None: no price card
    for a GPU model it used idly)."""

    tenant: str | None  # None: the namespace is mapped to no tenant
    namespace: str


def _weight(model: str | None, resource_or_profile: str | None) -> Fraction:
    """GPUs per device: 1 for a whole GPU, the compute fraction for a MIG instance of a known model."""
    if not resource_or_profile:
        return Fraction(1)
    profile = (mig_profiles.profile_of(resource_or_profile) if mig_profiles.is_mig_resource(resource_or_profile)
               else resource_or_profile)
    if model and mig_profiles.known_profile(model, profile):
        return mig_profiles.compute_fraction(model, profile)
    return Fraction(1)


def _node_models(session: Session) -> tuple[dict[str, str], dict[str, str]]:
    """GPU model by node name (the node's most common) and by GPU UUID."""
    by_node: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_uuid: dict[str, str] = {}
    for name, uuid, model in session.exec(select(Node.name, Gpu.uuid, Gpu.model).join(Gpu, col(Gpu.node_id) == Node.id)).all():
        by_node[name][model] += 1
        if uuid:
            by_uuid[uuid] = model
    return {name: max(models, key=models.get) for name, models in by_node.items()}, by_uuid


def _allocated(session: Session, slugs: set[str] | None, start: datetime, stop: datetime, node_models: dict[str, str],
               namespaces: set[str] | None = None) -> dict[tuple[str | None, str], Decimal]:
    """GPU-hours requested per (tenant slug, namespace) in [start, stop), of those tenants and
    namespaces (None: all)."""
    statement = select(K8sAllocation.tenant_slug, K8sAllocation.namespace, K8sAllocation.node_name, K8sAllocation.resource,
                       K8sAllocation.quantity, K8sAllocation.starts_at, K8sAllocation.ends_at).where(
        or_(col(K8sAllocation.resource).in_(GPU_RESOURCES), col(K8sAllocation.resource).startswith(mig_profiles.RESOURCE_PREFIX)),
        col(K8sAllocation.starts_at) < stop, or_(col(K8sAllocation.ends_at).is_(None), col(K8sAllocation.ends_at) > start))
    if slugs is not None:
        statement = statement.where(col(K8sAllocation.tenant_slug).in_(sorted(slugs)))
    if namespaces is not None:
        statement = statement.where(col(K8sAllocation.namespace).in_(sorted(namespaces)))
    out: dict[tuple[str | None, str], Decimal] = defaultdict(Decimal)
    for slug, namespace, node, resource, quantity, starts_at, ends_at in session.exec(statement).all():
        held = min(ends_at or stop, stop) - max(starts_at, start)
        if held <= timedelta(0):
            continue
        weight = _weight(node_models.get(node or ""), None if resource in GPU_RESOURCES else resource)
        hours = Decimal(held // timedelta(microseconds=1)) / MICROS_PER_HOUR
        out[(slug, namespace)] += quantity * hours * weight.numerator / weight.denominator
    return dict(out)


def _measured(session: Session, namespaces: set[str], start: datetime, stop: datetime,
              uuid_models: dict[str, str]) -> dict[str, dict[str, tuple[Decimal, Decimal]]]:
    """Per namespace, per GPU model: (GPU-hours measured, GPU-hours used) from its utilisation series."""
    if not namespaces:
        return {}
    statement = (select(Rollup5m.entity, Rollup5m.bucket, Rollup5m.sum / Rollup5m.count)
                 .where(Rollup5m.metric == NAMESPACE_GPU_UTIL_ROLLUP, Rollup5m.count > 0,
                        col(Rollup5m.bucket) >= start - MAX_SAMPLE_INTERVAL, col(Rollup5m.bucket) < stop)
                 .order_by(Rollup5m.entity, Rollup5m.bucket))
    if len(namespaces) <= PREFIXES_PER_QUERY:
        statement = statement.where(or_(*(col(Rollup5m.entity).startswith(f"{ns}|") for ns in sorted(namespaces))))
    series: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for entity, bucket, mean in session.exec(statement).all():
        series[entity].append((bucket, mean))
    out: dict[str, dict[str, tuple[Decimal, Decimal]]] = defaultdict(dict)
    for entity, points in series.items():
        namespace, gpu, profile = split_namespace_entity(entity)
        if namespace not in namespaces:
            continue
        model = uuid_models.get(gpu.split("/", 1)[0], "")
        weight = _weight(model, profile)
        share = Decimal(weight.numerator) / Decimal(weight.denominator)
        days: dict[date, tuple[Decimal, Decimal]] = {}
        add_samples(days, points, None, share, counted_from=start)  # those before `start`: previous samples only
        measured = sum((m for m, _ in days.values()), ZERO)
        used = sum((u for _, u in days.values()), ZERO)
        before = out[namespace].get(model, (ZERO, ZERO))
        out[namespace][model] = (before[0] + measured, before[1] + used)
    return out


def namespace_efficiency(
    session: Session, principal: Principal, start: datetime, end: datetime, *, tenant_id: int | None = None,
    now: datetime | None = None,
) -> list[NamespaceEfficiencyRow]:
    """One row per namespace of the caller's tenants (or only `tenant_id`) whose pods requested
    GPUs in [start, end) up to now, most idle cost first (then most idle GPU-hours)."""
    stop = min(end, now or utcnow())
    if stop <= start:
        return []
    tenants = {t.slug: t.id for t in session.exec(select(Tenant)).all() if principal.can_see(t.id)}
    if tenant_id is not None:
        tenants = {slug: tid for slug, tid in tenants.items() if tid == tenant_id}
    everyone = principal.sees_all_tenants and tenant_id is None
    node_models, uuid_models = _node_models(session)
    allocated = _allocated(session, None if everyone else set(tenants), start, stop, node_models)
    namespaces = {ns for _, ns in allocated}
    # whose a namespace's measurements are, from every tenant's requests, not only the caller's
    owners = _owners(allocated if everyone else _allocated(session, None, start, stop, node_models, namespaces))
    measured = _measured(session, namespaces, start, stop, uuid_models)
    cards = card_views(cards_overlapping(session, start, stop))
    currency, discounts = billing_currency(session, cards), current_discounts(session)
    last_hour = stop - timedelta(microseconds=1)
    rows = []
    for (slug, namespace), hours in allocated.items():
        per_model = measured.get(namespace, {}) if owners[namespace] == slug else {}
        measured_hours = sum((m for m, _ in per_model.values()), ZERO)
        used_hours = sum((u for _, u in per_model.values()), ZERO)
        percent = discounts.get(tenants.get(slug or ""), ZERO)
        costs = [idle_cost(cards, model, last_hour, max(m - u, ZERO), percent, currency) for model, (m, u) in per_model.items()]
        efficiency = (used_hours / measured_hours).quantize(PLACES) if measured_hours else None
        coverage = (measured_hours / hours).quantize(PLACES) if hours else None
        rows.append(NamespaceEfficiencyRow(
            tenant=slug, namespace=namespace, allocated_gpu_hours=hours.quantize(PLACES),
            measured_gpu_hours=measured_hours.quantize(PLACES), used_gpu_hours=used_hours.quantize(PLACES),
            idle_gpu_hours=max(measured_hours - used_hours, ZERO).quantize(PLACES), efficiency=efficiency, coverage=coverage,
            idle_cost=None if any(c is None for c in costs) else sum(costs, ZERO), currency=currency,
            waste=efficiency is not None and efficiency < WASTE_BELOW and coverage is not None and coverage >= MIN_COVERAGE))
    return sorted(rows, key=lambda r: (-(r.idle_cost or ZERO), -r.idle_gpu_hours, r.tenant or "", r.namespace))


def _owners(allocated: dict[tuple[str | None, str], Decimal]) -> dict[str, str | None]:
    """The tenant each namespace's measurements go to: the only one that held it in the window,
    or (when it changed hands) the one that requested the most GPU-hours there."""
    best: dict[str, tuple[Decimal, str]] = {}
    for (slug, namespace), hours in allocated.items():
        best[namespace] = max(best.get(namespace, (Decimal(-1), "")), (hours, slug or ""))
    return {namespace: slug or None for namespace, (_, slug) in best.items()}
