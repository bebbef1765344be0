"""The billing benchmark's attribution share: MIG and time-sliced nodes, metered energy and carbon.

Added to a copy of the billing database (not timed), so the same bills run twice — without and
with attribution — and the JSON line reports what attribution adds. On a share of the fleet's
nodes (`--attribution-share`, default 10 %):

- half are MIG nodes: every day, 4 pods each asking for 3 `nvidia.com/mig-1g.10gb` instances
  (8 h) and 2 pods asking for a `nvidia.com/mig-3g.40gb` (12 h), beside the GPU pods the
  generator already placed there;
- the other half are time-sliced: every day, 6 notebook pods asking for one `nvidia.com/gpu`
  each (9:00–17:00) on top of the generator's pods, so the node's GPUs are oversubscribed and
  shared pro rata;
- every one of them has metered energy each hour (DCMI kWh, a deterministic 4.0–7.9 kWh curve)
  and GPU energy counters (60 % of it), and sits in grid zone `BENCH`, whose hourly intensity is
  imported for the whole window.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

ZONE = "BENCH"
MIG_PODS = (("nvidia.com/mig-1g.10gb", 3, 8, 4), ("nvidia.com/mig-3g.40gb", 1, 12, 2))  # resource, count, hours, pods
NOTEBOOKS = 6


def add_attribution(url: str, spec, share: float) -> dict[str, int]:
    """Add MIG pods, time-sliced pods, energy and carbon intensity to the database at `url`;
    returns how many rows of each were added."""
    from sqlalchemy import insert, update
    from sqlmodel import select

    from collectors.models import GpuEnergyHour, K8sAllocation, NodeEnergyHour
    from fleet.models import Node
    from kiln.db import create_db_engine
    from metering.models import CarbonIntensity

    engine = create_db_engine(url)
    start, end = datetime.fromtimestamp(spec.start, UTC), datetime.fromtimestamp(spec.end, UTC)
    hours = int((end - start) // timedelta(hours=1))
    with engine.begin() as connection:
        nodes = connection.execute(select(Node.id, Node.name).order_by(Node.name)).all()
        chosen = nodes[:max(2, int(len(nodes) * share))]
        mig, sliced = chosen[::2], chosen[1::2]
        tenants = spec.namespaces
        pods, energy, gpu_energy = [], [], []
        for day in range((hours + 23) // 24):
            midnight = start + timedelta(days=day)
            for n, (_, name) in enumerate(mig):
                for resource, count, length, copies in MIG_PODS:
                    for c in range(copies):
                        begin = midnight + timedelta(hours=(n + c) % 8)
                        pods.append(_pod(tenants[(n + c) % len(tenants)], f"mig-{name}-{day}-{resource[-7:]}-{c}", name,
                                         resource, count, begin, min(begin + timedelta(hours=length), end)))
            for n, (_, name) in enumerate(sliced):
                for c in range(NOTEBOOKS):
                    begin = midnight + timedelta(hours=9)
                    pods.append(_pod(tenants[(n * NOTEBOOKS + c) % len(tenants)], f"nb-{name}-{day}-{c}", name,
                                     "nvidia.com/gpu", 1, begin, min(begin + timedelta(hours=8), end)))
        for node_id, name in chosen:
            for h in range(hours):
                hour = start + timedelta(hours=h)
                kwh = Decimal(40 + (h * 7 + node_id) % 40) / 10
                energy.append({"node_id": node_id, "hour": hour, "kwh": kwh, "covered_seconds": 3600})
                gpu_energy.append({"entity": f"bench-{name}", "node_id": node_id, "hour": hour,
                                   "kwh": (kwh * Decimal("0.6")).quantize(Decimal("0.000001")), "covered_seconds": 3600})
        pods = [p for p in pods if p["ends_at"] > p["starts_at"]]
        intensity = [{"zone": ZONE, "hour": start + timedelta(hours=h), "source": "import",
                      "g_co2e_per_kwh": Decimal(300 + (h % 24) * 5)} for h in range(hours)]
        for table, rows in ((K8sAllocation, pods), (NodeEnergyHour, energy), (GpuEnergyHour, gpu_energy),
                            (CarbonIntensity, intensity)):
            for chunk in range(0, len(rows), 50_000):
                connection.execute(insert(table), rows[chunk:chunk + 50_000])
        connection.execute(update(Node).where(Node.id.in_([i for i, _ in chosen])).values(zone=ZONE))
    engine.dispose()
    return {"mig_nodes": len(mig), "time_sliced_nodes": len(sliced), "pods": len(pods), "energy_hours": len(energy)}


def _pod(tenant: str, pod: str, node: str, resource: str, count: int, begin: datetime, end: datetime) -> dict:
    return {"namespace": tenant, "tenant_slug": tenant, "pod": pod, "pod_uid": pod, "node_name": node,
            "resource": resource, "quantity": Decimal(count), "starts_at": begin, "ends_at": end}


def attribution_checks(url: str, period: str) -> dict[str, object]:
    """Invariants on the attributed database after its bills run: no node-hour is charged more kWh
    than was metered, and the period's tenants' kWh + idle kWh = the metered kWh; its emissions."""
    from collections import defaultdict

    from sqlmodel import Session, select

    from collectors.models import NodeEnergyHour
    from fleet.models import Node
    from kiln.auth import Principal
    from kiln.db import create_db_engine
    from metering.carbon import emissions
    from metering.models import UsageRecord
    from metering.money import PARTS_PER_UNIT
    from metering.periods import period_bounds
    from metering.energy_usage import energy_place

    engine = create_db_engine(url)
    with Session(engine) as session:
        ids = dict(session.exec(select(Node.name, Node.id)).all())
        start, end = period_bounds(period)
        metered = {(n, h.astimezone(UTC)): int(Decimal(k) * PARTS_PER_UNIT)
                   for n, h, k in session.exec(select(NodeEnergyHour.node_id, NodeEnergyHour.hour, NodeEnergyHour.kwh)
                                               .where(NodeEnergyHour.hour >= start, NodeEnergyHour.hour < end)).all()}
        kwh: dict[tuple, int] = defaultdict(int)
        for resource_id, hour, parts in session.exec(select(UsageRecord.resource_id, UsageRecord.hour, UsageRecord.quantity_parts)
                                                     .where(UsageRecord.source == "energy")).all():
            kwh[(ids[energy_place(resource_id)[0]], hour.astimezone(UTC))] += parts
        report = emissions(session, Principal.system("benchmark"), period, None)
    engine.dispose()
    over = [key for key, parts in kwh.items() if parts > metered.get(key, 0)]
    attributed = sum((r.kwh for r in report.tenants), Decimal(0))
    metered_kwh = sum(metered.values()) / Decimal(PARTS_PER_UNIT)
    # each reported figure is rounded once to 6 places: the sum may differ by half a µkWh per figure
    slack = Decimal("0.0000005") * (len(report.tenants) + 1)
    return {"energy_within_metered": not over, "kwh_metered": str(metered_kwh),
            "energy_adds_up": abs(attributed + (report.idle_kwh or 0) - metered_kwh) <= slack,
            "kwh_attributed": str(attributed), "kwh_idle": str(report.idle_kwh),
            "kg_co2e": str(sum((r.kg_co2e for r in report.tenants), Decimal(0)))}
