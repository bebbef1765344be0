"""The emissions of the energy Kiln metered, per tenant (and per node or VDC), and idle energy.

Each tenant's energy usage rows (kWh per node-hour, exact) × the grid intensity of that node's
zone in that hour (`metering.carbon_intensity`); embodied emissions, where
`KILN_EMBODIED_EMISSIONS` gives kg CO2e per node-hour for a resource class, for each leased
node-hour; idle energy is each node-hour's metered kWh less what was attributed to tenants
(never negative), shown to global roles only. kg CO2e are rounded half-even to the gram once
per figure; kWh in hours without an intensity figure (a node with no zone, a gap in the data)
are reported as `kwh_without_intensity`, never counted as zero.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache

from pydantic import BaseModel
from sqlalchemy import Select, and_, case
from sqlmodel import Session, col, func, or_, select

from collectors.models import NodeEnergyHour
from fleet.models import Gpu, Node
from fleet.tenancy_models import GpuInstanceLease, Vdc
from fleet.usage import overlapping
from kiln.auth import Principal
from kiln.models import Tenant
from metering import skus
from metering.models import CarbonIntensity, UsageRecord
from metering.money import PARTS_PER_UNIT, quantity_from_parts
from metering.periods import HOUR, period_bounds
from metering.energy_usage import energy_place
from metering.usage import SOURCE_ENERGY, SOURCE_LEASE
from metering.usage_io import copies, stream_rows

GRAM = Decimal("0.001")
GROUPINGS = ("tenant", "node", "vdc", "namespace")


class EmissionsRow(BaseModel):
    """One tenant's (or one tenant's on one node, or in one VDC) metered energy in a period and
    what it emitted."""

    tenant: str
    node: str | None = None  # by=node
    vdc: str | None = None  # by=vdc (None: energy outside any VDC grant)
    namespace: str | None = None  # by=namespace (None: energy of leased nodes, not of a namespace)
    kwh: Decimal
    kg_co2e: Decimal
    kwh_without_intensity: Decimal
    embodied_kg_co2e: Decimal = Decimal(0)  # leased node-hours (instance leases: their part) × KILN_EMBODIED_EMISSIONS of their class


class EmissionsReport(BaseModel):
    """Per tenant the caller may see; idle energy (metered, attributed to nobody) for global roles."""

    period: str
    tenants: list[EmissionsRow]
    idle_kwh: Decimal | None = None
    idle_kg_co2e: Decimal | None = None
    idle_kwh_without_intensity: Decimal | None = None


def _node_of_resource(resource_id, dialect: str):
    """SQL: the node of an energy row's resource (`energy_place`'s first part)."""
    if dialect == "postgresql":
        return func.split_part(resource_id, "/k8s:", 1)
    cut = func.instr(resource_id, "/k8s:")
    return case((cut > 0, func.substr(resource_id, 1, cut - 1)), else_=resource_id)


class EnergyLedger:
    """Tenants' metered energy per hour (exact kWh parts), the emissions of each hour's kWh in
    its node's zone, and what was attributed per node-hour (`attributed`, read when first asked:
    only the idle figures need it); built once per period. The energy rows are streamed, not
    held: a month of a large fleet is millions of them."""

    def __init__(self, session: Session, start: datetime, end: datetime, default_zone: str | None,
                 tenant_ids: frozenset[int] | None = None) -> None:
        """The period's energy of every tenant, or only of `tenant_ids` (then `attributed` is partial)."""
        self.zone_of = {name: zone or default_zone for name, zone in session.exec(select(Node.name, Node.zone)).all()}
        self.intensity = {(zone, hour.astimezone(UTC)): g for zone, hour, g in session.exec(
            select(CarbonIntensity.zone, CarbonIntensity.hour, CarbonIntensity.g_co2e_per_kwh)
            .where(col(CarbonIntensity.hour) >= start, col(CarbonIntensity.hour) < end))}
        # tenant → hour → [kWh parts, Σ parts × g, parts without intensity]; and per (tenant, node, VDC, namespace)
        self.hours: dict[int, dict[datetime, list]] = defaultdict(lambda: defaultdict(lambda: [0, Decimal(0), 0]))
        self.places: dict[tuple[int, str, int | None, str | None], list] = defaultdict(lambda: [0, Decimal(0), 0])
        self._session, self._start, self._end, self._tenant_ids = session, start, end, tenant_ids
        self._attributed: dict[tuple[str, datetime], int] | None = None
        self._default_zone = default_zone
        if copies(session.connection()):  # PostgreSQL: summed in SQL, exactly (numeric), from millions of rows
            self._sum_in_sql()
            return
        for tenant_id, node, namespace, vdc_id, hour, parts in self._rows():
            g = self.intensity_at(node, hour)
            for slot in (self.hours[tenant_id][hour], self.places[(tenant_id, node, vdc_id, namespace)]):
                slot[0] += parts
                if g is None:
                    slot[2] += parts
                else:
                    slot[1] += parts * g

    def _energy_rows(self, *columns) -> Select:
        """The energy rows in scope, each joined to its node's zone's intensity in its hour (none
        for a node Kiln does not know, as `intensity_at`)."""
        node = _node_of_resource(UsageRecord.resource_id, self._session.connection().dialect.name)
        zone = case((col(Node.id).is_(None), None), else_=func.coalesce(Node.zone, self._default_zone))
        statement = (select(*columns).select_from(UsageRecord)
                     .join(Node, col(Node.name) == node, isouter=True)
                     .join(CarbonIntensity, and_(col(CarbonIntensity.zone) == zone, col(CarbonIntensity.hour) == UsageRecord.hour),
                           isouter=True)
                     .where(UsageRecord.source == SOURCE_ENERGY, UsageRecord.sku == skus.KWH,
                            col(UsageRecord.hour) >= self._start, col(UsageRecord.hour) < self._end))
        if self._tenant_ids is not None:
            statement = statement.where(col(UsageRecord.tenant_id).in_(sorted(self._tenant_ids)))
        return statement

    def _sum_in_sql(self) -> None:
        g, parts = CarbonIntensity.g_co2e_per_kwh, UsageRecord.quantity_parts
        sums = (func.sum(parts), func.coalesce(func.sum(parts * g), 0), func.coalesce(func.sum(case((col(g).is_(None), parts), else_=0)), 0))
        connection = self._session.connection()
        by_hour = self._energy_rows(UsageRecord.tenant_id, UsageRecord.hour, *sums).group_by(UsageRecord.tenant_id, UsageRecord.hour)
        for tenant_id, hour, total, weighted, unpriced in stream_rows(connection, by_hour):
            self.hours[tenant_id][hour.astimezone(UTC)] = [int(total), Decimal(weighted), int(unpriced)]
        by_place = self._energy_rows(UsageRecord.tenant_id, UsageRecord.resource_id, UsageRecord.vdc_id, *sums).group_by(
            UsageRecord.tenant_id, UsageRecord.resource_id, UsageRecord.vdc_id)
        for tenant_id, resource_id, vdc_id, total, weighted, unpriced in stream_rows(connection, by_place):
            node, namespace = energy_place(resource_id)
            slot = self.places[(tenant_id, node, vdc_id, namespace)]
            slot[0], slot[1], slot[2] = slot[0] + int(total), slot[1] + Decimal(weighted), slot[2] + int(unpriced)

    def _rows(self) -> Iterator[tuple[int, str, str | None, int | None, datetime, int]]:
        """(tenant id, node, namespace, VDC id, hour in UTC, kWh parts) of every energy row in scope."""
        statement = (select(UsageRecord.tenant_id, UsageRecord.resource_id, UsageRecord.vdc_id, UsageRecord.hour,
                            UsageRecord.quantity_parts)
                     .where(UsageRecord.source == SOURCE_ENERGY, UsageRecord.sku == skus.KWH,
                            col(UsageRecord.hour) >= self._start, col(UsageRecord.hour) < self._end))
        if self._tenant_ids is not None:
            statement = statement.where(col(UsageRecord.tenant_id).in_(sorted(self._tenant_ids)))
        place = cache(energy_place)  # a node's or namespace's rows repeat their resource every hour
        for tenant_id, resource_id, vdc_id, hour, parts in stream_rows(self._session.connection(), statement):
            yield (tenant_id, *place(resource_id), vdc_id, hour.astimezone(UTC), parts)

    @property
    def attributed(self) -> dict[tuple[str, datetime], int]:
        """kWh parts attributed to tenants per (node, hour)."""
        if self._attributed is None:
            self._attributed = defaultdict(int)
            if copies(self._session.connection()):
                node = _node_of_resource(UsageRecord.resource_id, "postgresql")
                statement = self._energy_rows(node, UsageRecord.hour, func.sum(UsageRecord.quantity_parts)).group_by(node, UsageRecord.hour)
                for name, hour, parts in stream_rows(self._session.connection(), statement):
                    self._attributed[(name, hour.astimezone(UTC))] += int(parts)
                return self._attributed
            for _, node, _, _, hour, parts in self._rows():
                self._attributed[(node, hour)] += parts
        return self._attributed

    def intensity_at(self, node: str, hour: datetime) -> Decimal | None:
        """gCO2e/kWh of the node's zone in that hour, or None when unknown."""
        return self.intensity.get((self.zone_of.get(node), hour))

    def totals(self, tenant_id: int, start: datetime | None = None, end: datetime | None = None) -> tuple[int, Decimal, int]:
        """(kWh parts, Σ parts × g, parts without intensity) of a tenant, over [start, end) if given."""
        parts, weighted, unpriced = 0, Decimal(0), 0
        for hour, (p, w, u) in self.hours.get(tenant_id, {}).items():
            if (start is None or hour >= start) and (end is None or hour < end):
                parts, weighted, unpriced = parts + p, weighted + w, unpriced + u
        return parts, weighted, unpriced

    def per_day(self, tenant_ids: set[int] | None = None) -> dict[str, tuple[Decimal, Decimal]]:
        """(kWh, kg CO2e) per UTC day (`YYYY-MM-DD`) of the tenants (all when None)."""
        days: dict[str, list] = defaultdict(lambda: [0, Decimal(0)])
        for tenant_id, hours in self.hours.items():
            if tenant_ids is None or tenant_id in tenant_ids:
                for hour, (parts, weighted, _) in hours.items():
                    slot = days[f"{hour:%Y-%m-%d}"]
                    slot[0] += parts
                    slot[1] += weighted
        return {day: (quantity_from_parts(p), kg_co2e(w)) for day, (p, w) in sorted(days.items())}

    def window(self, tenant_id: int, start: datetime, end: datetime) -> tuple[Decimal, Decimal | None]:
        """kWh and kg CO2e of a tenant in [start, end); kg is None when some of the kWh has no intensity."""
        parts, weighted, unpriced = self.totals(tenant_id, start, end)
        return quantity_from_parts(parts), None if unpriced else kg_co2e(weighted)


def emissions(session: Session, principal: Principal, period: str, default_zone: str | None,
              embodied: dict[str, Decimal] | None = None, by: str = "tenant",
              ledger: EnergyLedger | None = None) -> EmissionsReport:
    """kWh and kg CO2e per tenant — or per tenant and node (`by="node"`), VDC (`by="vdc"`) or
    Kubernetes namespace (`by="namespace"`; embodied emissions, of leased node-hours, have none) —
    and idle energy for infra admins and finance, in `period`; `embodied`: kg CO2e per node-hour
    by resource class (KILN_EMBODIED_EMISSIONS); `ledger`: the period's, when the caller has it."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}")
    start, end = period_bounds(period)
    scope = None if principal.sees_all_tenants else principal.tenant_ids  # read only the caller's tenants' rows
    ledger = ledger or EnergyLedger(session, start, end, default_zone, scope)
    slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
    vdcs = dict(session.exec(select(Vdc.id, Vdc.name)).all())
    groups: dict[tuple, list] = defaultdict(lambda: [0, Decimal(0), 0, Decimal(0)])
    for (tenant_id, node, vdc_id, namespace), (parts, weighted, unpriced) in ledger.places.items():
        group = groups[_key(by, tenant_id, node, vdc_id, namespace)]
        group[0], group[1], group[2] = group[0] + parts, group[1] + weighted, group[2] + unpriced
    for (tenant_id, node, vdc_id), built in _embodied(session, start, end, embodied or {}).items():
        groups[_key(by, tenant_id, node, vdc_id, None)][3] += built
    rows = [EmissionsRow(tenant=slugs[key[0]], node=key[1] if by == "node" else None,
                         vdc=vdcs.get(key[1]) if by == "vdc" else None,
                         namespace=key[1] if by == "namespace" else None, kwh=quantity_from_parts(parts),
                         kg_co2e=kg_co2e(weighted), kwh_without_intensity=quantity_from_parts(unpriced),
                         embodied_kg_co2e=_kg_of_parts(built))
            for key, (parts, weighted, unpriced, built) in groups.items() if principal.can_see(key[0])]
    rows.sort(key=lambda r: (r.tenant, r.node or "", r.vdc or "", r.namespace or ""))
    report = EmissionsReport(period=period, tenants=rows)
    if principal.sees_all_tenants:
        _add_idle(session, report, start, end, ledger)
    return report


def _key(by: str, tenant_id: int, node: str, vdc_id: int | None, namespace: str | None) -> tuple:
    return {"tenant": (tenant_id,), "node": (tenant_id, node), "vdc": (tenant_id, vdc_id),
            "namespace": (tenant_id, namespace)}[by]


def _add_idle(session: Session, report: EmissionsReport, start: datetime, end: datetime, ledger: EnergyLedger) -> None:
    names = dict(session.exec(select(Node.id, Node.name)).all())
    idle_parts, weighted, unpriced, attributed = 0, Decimal(0), 0, ledger.attributed
    for node_id, hour, kwh in stream_rows(session.connection(), select(NodeEnergyHour.node_id, NodeEnergyHour.hour, NodeEnergyHour.kwh).where(
            col(NodeEnergyHour.hour) >= start, col(NodeEnergyHour.hour) < end)):
        name, hour = names[node_id], hour.astimezone(UTC)
        idle = max(0, int(Decimal(kwh) * PARTS_PER_UNIT) - attributed.get((name, hour), 0))
        idle_parts += idle
        g = ledger.intensity_at(name, hour)
        if g is None:
            unpriced += idle
        else:
            weighted += idle * g
    report.idle_kwh, report.idle_kg_co2e = quantity_from_parts(idle_parts), kg_co2e(weighted)
    report.idle_kwh_without_intensity = quantity_from_parts(unpriced)


def _embodied(session: Session, start: datetime, end: datetime,
              per_class: dict[str, Decimal]) -> dict[tuple[int, str, int | None], Decimal]:
    """Per (tenant, node, VDC): Σ leased node-hour parts × kg CO2e per node-hour of the node's
    class; a GPU instance lease (`gpu-hour:<model>:<profile>` lease rows) holds its GPU-hours ÷
    the node's GPUs of the node-hour (as many as the lease recorded, `_instance_gpus`)."""
    out: dict[tuple[int, str, int | None], Decimal] = defaultdict(Decimal)
    if not per_class:
        return out
    nodes: dict[str, tuple[str | None, int]] | None = None
    recorded: dict[tuple, list[tuple[datetime, datetime | None, int]]] = {}
    for tenant_id, node, vdc_id, sku, hour, parts in stream_rows(
            session.connection(), select(UsageRecord.tenant_id, UsageRecord.resource_id, UsageRecord.vdc_id, UsageRecord.sku,
                   UsageRecord.hour, UsageRecord.quantity_parts)
            .where(UsageRecord.source == SOURCE_LEASE, or_(col(UsageRecord.sku).startswith(f"{skus.NODE_HOUR}:"),
                                                           col(UsageRecord.sku).startswith(f"{skus.GPU_HOUR}:")),
                   col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end)):
        kind, _, rest = sku.partition(":")
        if kind == skus.NODE_HOUR:
            kg = per_class.get(rest)
        elif ":" in rest:  # a MIG profile's GPU-hours: an instance lease, not a whole node's GPUs
            if nodes is None:
                nodes, recorded = _classes_and_gpus(session), _instance_gpus(session, start, end)
            resource_class, gpus = nodes.get(node, (None, 0))
            gpus = next((n for a, b, n in recorded.get((tenant_id, node, vdc_id, sku), [])
                         if a < hour + HOUR and (b is None or b > hour)), gpus)
            kg = per_class[resource_class] / gpus if resource_class in per_class and gpus else None
        else:
            kg = None  # a whole-node lease's GPUs: its node-hours carry the node's embodied emissions
        if kg is not None:
            out[(tenant_id, node, vdc_id)] += parts * kg
    return out


def _instance_gpus(session: Session, start: datetime, end: datetime
                   ) -> dict[tuple[int, str, int | None, str], list[tuple[datetime, datetime | None, int]]]:
    """(tenant, node name, VDC, SKU) of GPU instance leases within [start, end) → their (start, end,
    the node's GPUs when the lease was made): a GPU row removed since does not change the share."""
    out: dict[tuple[int, str, int | None, str], list[tuple[datetime, datetime | None, int]]] = defaultdict(list)
    for lease, node in session.exec(select(GpuInstanceLease, Node.name).join(Node, col(Node.id) == GpuInstanceLease.node_id)
                                    .where(overlapping(start, end, GpuInstanceLease))).all():
        key = (lease.tenant_id, node, lease.vdc_id, skus.gpu_hour(lease.gpu_model, lease.profile))
        out[key].append((lease.starts_at, lease.ends_at, lease.node_gpus))
    return out


def _classes_and_gpus(session: Session) -> dict[str, tuple[str | None, int]]:
    """Node name → (resource class, number of GPUs)."""
    gpus = dict(session.exec(select(Gpu.node_id, func.count()).group_by(Gpu.node_id)).all())
    return {name: (rc, gpus.get(node_id, 0)) for node_id, name, rc in
            session.exec(select(Node.id, Node.name, Node.resource_class)).all()}


def _kg_of_parts(parts_times_kg: Decimal) -> Decimal:
    return (parts_times_kg / PARTS_PER_UNIT).quantize(GRAM, ROUND_HALF_EVEN)


def kg_co2e(parts_times_grams: Decimal) -> Decimal:
    """kg CO2e from Σ (kWh parts × gCO2e/kWh), rounded half-even to the gram."""
    return (parts_times_grams / PARTS_PER_UNIT / 1000).quantize(GRAM, ROUND_HALF_EVEN)
