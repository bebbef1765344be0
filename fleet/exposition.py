"""`/metrics`: which tenant holds which node's GPUs now, for per-tenant PromQL rules.

`kiln_lease_gpus{tenant, node}` is the GPU count of every node under a lease in force, or the
GPUs a tenant holds of a node as GPU instance leases (their compute fractions summed, e.g. 3/7)
(deploy/prometheus/kiln-recording-rules.yml turns it into per-tenant GPU-hours); read from
the database at scrape time, so every API replica exports the same value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from fractions import Fraction

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from fleet.models import Gpu, Node
from fleet.tenancy_models import GpuInstanceLease, Lease
from fleet.usage import in_force, instance_fractions
from kiln.db import utcnow
from kiln.models import Tenant


class LeaseExposition(Collector):
    """A prometheus_client collector over the leases in force."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> list[Metric]:
        """Nothing up front (no query when the collector is registered)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One sample per leased node (its GPU count) and per tenant holding GPU instances of a node
        (their GPUs by compute fraction), labelled with the holding tenant."""
        family = GaugeMetricFamily("kiln_lease_gpus", "GPUs of a node leased to a tenant now", labels=["tenant", "node"])
        gpus = select(Gpu.node_id, func.count().label("n")).group_by(Gpu.node_id).subquery()
        with Session(self.engine) as session:
            rows = session.exec(
                select(Tenant.slug, Node.name, func.coalesce(gpus.c.n, 0))
                .join(Lease, Lease.tenant_id == Tenant.id).join(Node, Node.id == Lease.node_id)
                .outerjoin(gpus, gpus.c.node_id == Node.id).where(in_force(utcnow())).order_by(Node.name)).all()
            held = instance_fractions(session, in_force(utcnow(), GpuInstanceLease))
            slugs = dict(session.exec(select(Tenant.id, Tenant.slug).where(col(Tenant.id).in_({i.tenant_id for i, _ in held}))).all())
            names = dict(session.exec(select(Node.id, Node.name).where(col(Node.id).in_({i.node_id for i, _ in held}))).all())
        instances: dict[tuple[str, str], Fraction] = defaultdict(Fraction)
        for instance, fraction in held:
            instances[(slugs[instance.tenant_id], names[instance.node_id])] += fraction
        for tenant, node, count in rows:
            family.add_metric([tenant, node], float(count))
        for (tenant, node), fraction in sorted(instances.items(), key=lambda item: (item[0][1], item[0][0])):
            family.add_metric([tenant, node], float(fraction))
        yield family
