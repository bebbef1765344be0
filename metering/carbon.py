"""Grid carbon intensity per zone and hour, and the emissions of the energy Kiln metered.

Intensity (gCO2e per kWh, to 3 decimals) comes from a CSV file (`kiln carbon import FILE`,
header `zone,hour,g_co2e_per_kwh`, hours on the hour with a timezone; all or nothing: every
problem is reported with its row, and the file must cover its span of hours per zone without
gaps) or from a source that answers like Electricity Maps' documented
`GET /v3/carbon-intensity/history?zone=Z` (`KILN_CARBON_URL`, `kiln carbon fetch`). Only zones
that nodes use (`zone` of a node, else `KILN_CARBON_ZONE`) are accepted: an unknown zone is a
typo until a node names it.

Emissions: each tenant's energy usage rows (kWh per node-hour, exact) × the intensity of that
node's zone in that hour; embodied emissions, where `KILN_EMBODIED_EMISSIONS` gives kg CO2e per
node-hour for a resource class, for each leased node-hour; idle energy is each node-hour's metered kWh less what was
attributed to tenants (never negative), shown to global roles only. kg CO2e are rounded
half-even to the gram once per figure; kWh in hours without an intensity figure (a node with
no zone, a gap in the data) are reported as `kwh_without_intensity`, never counted as zero.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import httpx
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from collectors.models import NodeEnergyHour
from fleet.models import Node
from kiln.auth import Principal
from kiln.db import upsert
from kiln.errors import BadGateway, BadRequest
from kiln.models import Tenant
from kiln.settings import Settings
from metering import skus
from metering.models import CarbonIntensity, UsageRecord
from metering.money import PARTS_PER_UNIT, MoneyError, parse_decimal, quantity_from_parts
from metering.periods import period_bounds
from metering.usage import SOURCE_ENERGY, SOURCE_LEASE

log = logging.getLogger("metering.carbon")
HEADER = ["zone", "hour", "g_co2e_per_kwh"]
HOUR = timedelta(hours=1)
GRAM = Decimal("0.001")
MAX_ERRORS_SHOWN = 20


class CarbonError(BadRequest):
    """An intensity file or answer that cannot be imported; nothing was stored."""


def known_zones(session: Session, default_zone: str | None) -> set[str]:
    """The zones nodes use (their own, or the default)."""
    zones = {zone for zone in session.exec(select(Node.zone).distinct()).all() if zone}
    return zones | ({default_zone} if default_zone else set())


def parse_intensity_csv(text: str, zones: set[str]) -> list[dict[str, Any]]:
    """Rows of an intensity file, or CarbonError listing every problem with its row number."""
    reader = csv.reader(io.StringIO(text))
    header = [cell.strip() for cell in next(reader, [])]
    if header != HEADER:
        raise CarbonError(f"the first line must be the header {','.join(HEADER)} (found {','.join(header) or 'nothing'})")
    rows: dict[tuple[str, datetime], dict[str, Any]] = {}
    errors: list[str] = []
    for number, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        try:
            row = _row(cells, zones)
        except ValueError as exc:
            errors.append(f"row {number}: {exc}")
            continue
        key = (row["zone"], row["hour"])
        if key in rows:
            errors.append(f"row {number}: {row['zone']} {row['hour']:%Y-%m-%dT%H:%MZ} is given twice")
        rows[key] = row
    errors += _gaps(rows)
    if errors:
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN]) + ("; …" if len(errors) > MAX_ERRORS_SHOWN else "")
        raise CarbonError(f"{len(errors)} problem(s), nothing imported: {shown}", problems=errors)
    if not rows:
        raise CarbonError("the file has a header but no rows: nothing to import")
    return list(rows.values())


def _row(cells: list[str], zones: set[str]) -> dict[str, Any]:
    if len(cells) != len(HEADER):
        raise ValueError(f"expected {len(HEADER)} columns ({','.join(HEADER)}), found {len(cells)}")
    zone, hour_text, value_text = (cell.strip() for cell in cells)
    if zone not in zones:
        known = ", ".join(sorted(zones)) or "none: set KILN_CARBON_ZONE or a node's zone first"
        raise ValueError(f"zone {zone!r} is no node's zone (known: {known})")
    return {"zone": zone, "hour": parse_hour(hour_text), "g_co2e_per_kwh": _intensity(value_text)}


def parse_hour(text: str) -> datetime:
    """An ISO 8601 time on the hour with a timezone, in UTC."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"hour {text!r} is not an ISO 8601 time (e.g. 2026-11-01T00:00Z)") from None
    if at.tzinfo is None:
        raise ValueError(f"hour {text!r} has no timezone: add Z for UTC")
    if at.minute or at.second or at.microsecond:
        raise ValueError(f"hour {text!r} is not on the hour")
    return at.astimezone(UTC)


def _intensity(text: object) -> Decimal:
    try:
        return parse_decimal(text, "g_co2e_per_kwh", places=3)
    except MoneyError as exc:
        raise ValueError(str(exc)) from None


def _gaps(rows: dict[tuple[str, datetime], dict[str, Any]]) -> list[str]:
    hours: dict[str, list[datetime]] = defaultdict(list)
    for zone, hour in rows:
        hours[zone].append(hour)
    found = []
    for zone, listed in sorted(hours.items()):
        listed.sort()
        for before, after in zip(listed, listed[1:]):
            if after - before > HOUR:
                found.append(f"{zone} has no figure for {before + HOUR:%Y-%m-%dT%H:%MZ}"
                             + (f" to {after - HOUR:%Y-%m-%dT%H:%MZ}" if after - before > 2 * HOUR else ""))
    return found


def store(session: Session, rows: list[dict[str, Any]], source: str) -> int:
    """Insert or replace intensity figures; how many."""
    upsert(session, CarbonIntensity, [{**row, "source": source} for row in rows], ("zone", "hour"),
           ("g_co2e_per_kwh", "source"))
    return len(rows)


def fetch_history(url: str, zone: str, *, token: str | None = None, http: httpx.Client | None = None) -> list[dict[str, Any]]:
    """A zone's recent hourly intensity from an Electricity Maps-shaped source:
    `{"zone": Z, "history": [{"carbonIntensity": 302, "datetime": "2026-11-01T00:00:00.000Z"}, …]}`;
    entries without a figure (`null`) are left out. BadGateway when the source fails."""
    client = http or httpx.Client(timeout=10.0)
    target = f"{url.rstrip('/')}/v3/carbon-intensity/history"
    try:
        response = client.get(target, params={"zone": zone}, headers={"auth-token": token} if token else {})
        response.raise_for_status()
        body = response.json()
    except httpx.HTTPStatusError as exc:
        raise BadGateway(f"{target} answered HTTP {exc.response.status_code} for zone {zone}") from None
    except (httpx.HTTPError, ValueError) as exc:
        raise BadGateway(f"{target} did not answer with JSON for zone {zone}: {exc}") from None
    history = body.get("history") if isinstance(body, dict) else None
    if not isinstance(history, list):
        raise BadGateway(f"{target} answered without a `history` list for zone {zone}")
    rows, errors = [], []
    for index, entry in enumerate(history):
        if not isinstance(entry, dict) or entry.get("carbonIntensity") is None:
            continue
        try:
            rows.append({"zone": zone, "hour": parse_hour(str(entry.get("datetime", "")).replace(".000Z", "Z")),
                         "g_co2e_per_kwh": _intensity(entry["carbonIntensity"])})
        except ValueError as exc:
            errors.append(f"history[{index}]: {exc}")
    if errors:
        raise BadGateway(f"{target} gave unusable figures for zone {zone}, nothing stored: " + "; ".join(errors[:5]))
    return rows


def fetch_job(settings: Settings, engine: Engine) -> Callable[[], None]:
    """The worker's hourly job: fetch every zone nodes use from KILN_CARBON_URL; a zone whose
    source fails is logged and tried again next hour, the others are stored."""
    token = settings.carbon_token.get_secret_value() if settings.carbon_token else None

    def run() -> None:
        with Session(engine) as session:
            for zone in sorted(known_zones(session, settings.carbon_zone)):
                try:
                    stored = store(session, fetch_history(settings.carbon_url or "", zone, token=token), "fetch")
                except BadGateway as exc:
                    log.warning("carbon intensity of %s: %s", zone, exc.detail)
                    continue
                session.commit()
                log.debug("carbon intensity of %s: %d hours", zone, stored)

    return run


class EmissionsRow(BaseModel):
    """One tenant's metered energy in a period and what it emitted."""

    tenant: str
    kwh: Decimal
    kg_co2e: Decimal
    kwh_without_intensity: Decimal
    embodied_kg_co2e: Decimal = Decimal(0)  # leased node-hours × KILN_EMBODIED_EMISSIONS of their class


class EmissionsReport(BaseModel):
    """Per tenant the caller may see; idle energy (metered, attributed to nobody) for global roles."""

    period: str
    tenants: list[EmissionsRow]
    idle_kwh: Decimal | None = None
    idle_kg_co2e: Decimal | None = None
    idle_kwh_without_intensity: Decimal | None = None


class EnergyLedger:
    """Tenants' metered energy per hour (exact kWh parts), the emissions of each hour's kWh in
    its node's zone, and what was attributed per node-hour; built once per period."""

    def __init__(self, session: Session, start: datetime, end: datetime, default_zone: str | None) -> None:
        self.zone_of = {name: zone or default_zone for name, zone in session.exec(select(Node.name, Node.zone)).all()}
        self.intensity = {(zone, hour.astimezone(UTC)): g for zone, hour, g in session.exec(
            select(CarbonIntensity.zone, CarbonIntensity.hour, CarbonIntensity.g_co2e_per_kwh)
            .where(col(CarbonIntensity.hour) >= start, col(CarbonIntensity.hour) < end))}
        # tenant → hour → [kWh parts, Σ parts × g, parts without intensity]
        self.hours: dict[int, dict[datetime, list]] = defaultdict(lambda: defaultdict(lambda: [0, Decimal(0), 0]))
        self.attributed: dict[tuple[str, datetime], int] = defaultdict(int)
        for tenant_id, node, hour, parts in session.exec(
                select(UsageRecord.tenant_id, UsageRecord.resource_id, UsageRecord.hour, UsageRecord.quantity_parts)
                .where(UsageRecord.source == SOURCE_ENERGY, UsageRecord.sku == skus.KWH,
                       col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end)).all():
            hour = hour.astimezone(UTC)
            self.attributed[(node, hour)] += parts
            slot = self.hours[tenant_id][hour]
            g = self.intensity_at(node, hour)
            slot[0] += parts
            if g is None:
                slot[2] += parts
            else:
                slot[1] += parts * g

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
              embodied: dict[str, Decimal] | None = None) -> EmissionsReport:
    """kWh and kg CO2e per tenant (and idle, for infra admins and finance) in `period`;
    `embodied`: kg CO2e per node-hour by resource class (KILN_EMBODIED_EMISSIONS)."""
    start, end = period_bounds(period)
    ledger = EnergyLedger(session, start, end, default_zone)
    slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
    built = _embodied(session, start, end, embodied or {})
    rows = []
    for tenant_id in sorted(set(ledger.hours) | set(built), key=lambda t: slugs[t]):
        if principal.can_see(tenant_id):
            parts, weighted, unpriced = ledger.totals(tenant_id)
            rows.append(EmissionsRow(tenant=slugs[tenant_id], kwh=quantity_from_parts(parts), kg_co2e=kg_co2e(weighted),
                                     kwh_without_intensity=quantity_from_parts(unpriced),
                                     embodied_kg_co2e=_kg_of_parts(built.get(tenant_id, Decimal(0)))))
    report = EmissionsReport(period=period, tenants=rows)
    if principal.sees_all_tenants:
        _add_idle(session, report, start, end, ledger)
    return report


def _add_idle(session: Session, report: EmissionsReport, start: datetime, end: datetime, ledger: EnergyLedger) -> None:
    names = dict(session.exec(select(Node.id, Node.name)).all())
    idle_parts, weighted, unpriced = 0, Decimal(0), 0
    for node_id, hour, kwh in session.exec(select(NodeEnergyHour.node_id, NodeEnergyHour.hour, NodeEnergyHour.kwh).where(
            col(NodeEnergyHour.hour) >= start, col(NodeEnergyHour.hour) < end)).all():
        name, hour = names[node_id], hour.astimezone(UTC)
        idle = max(0, int(Decimal(kwh) * PARTS_PER_UNIT) - ledger.attributed.get((name, hour), 0))
        idle_parts += idle
        g = ledger.intensity_at(name, hour)
        if g is None:
            unpriced += idle
        else:
            weighted += idle * g
    report.idle_kwh, report.idle_kg_co2e = quantity_from_parts(idle_parts), kg_co2e(weighted)
    report.idle_kwh_without_intensity = quantity_from_parts(unpriced)


def _embodied(session: Session, start: datetime, end: datetime, per_class: dict[str, Decimal]) -> dict[int, Decimal]:
    """Per tenant: Σ leased node-hour parts × kg CO2e per node-hour of the node's class."""
    out: dict[int, Decimal] = defaultdict(Decimal)
    if not per_class:
        return out
    for tenant_id, sku, parts in session.exec(
            select(UsageRecord.tenant_id, UsageRecord.sku, UsageRecord.quantity_parts)
            .where(UsageRecord.source == SOURCE_LEASE, col(UsageRecord.sku).startswith(f"{skus.NODE_HOUR}:"),
                   col(UsageRecord.hour) >= start, col(UsageRecord.hour) < end)).all():
        kg = per_class.get(sku.split(":", 1)[1])
        if kg is not None:
            out[tenant_id] += parts * kg
    return out


def _kg_of_parts(parts_times_kg: Decimal) -> Decimal:
    return (parts_times_kg / PARTS_PER_UNIT).quantize(GRAM, ROUND_HALF_EVEN)


def kg_co2e(parts_times_grams: Decimal) -> Decimal:
    """kg CO2e from Σ (kWh parts × gCO2e/kWh), rounded half-even to the gram."""
    return (parts_times_grams / PARTS_PER_UNIT / 1000).quantize(GRAM, ROUND_HALF_EVEN)
