"""Grid carbon intensity per zone and hour: imported from CSV or fetched from a source that
answers like Electricity Maps.

A CSV file (`kiln carbon import FILE`, header `zone,hour,g_co2e_per_kwh`, hours on the hour
with a timezone) is imported all or nothing: every problem is reported with its row, and the
file must cover its span of hours per zone without gaps. `KILN_CARBON_URL` is read in the shape
of Electricity Maps' documented `GET /v3/carbon-intensity/history?zone=Z` (`kiln carbon fetch`,
and `kiln worker` every hour). Only zones that nodes use (`zone` of a node, else
`KILN_CARBON_ZONE`) are accepted: an unknown zone is a typo until a node names it. Figures are
gCO2e per kWh to 3 decimals.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.models import Node
from kiln.db import upsert
from kiln.errors import BadGateway, BadRequest
from kiln.settings import Settings
from metering.models import CarbonIntensity
from metering.money import MoneyError, parse_decimal

log = logging.getLogger("metering.carbon")
HEADER = ["zone", "hour", "g_co2e_per_kwh"]
HOUR = timedelta(hours=1)
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


def fetch_history(url: str, zone: str, *, token: str | None = None, http: httpx.Client | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> list[dict[str, Any]]:
    """A zone's hourly intensity from an Electricity Maps-shaped source: the last 24 hours
    (`GET /v3/carbon-intensity/history?zone=Z` → `{"zone": Z, "history": [...]}`), or with
    `since` (and `until`, default now) a past range (`GET /v3/carbon-intensity/past-range?zone=Z&start=&end=`
    → `{"zone": Z, "data": [...]}`); each entry `{"carbonIntensity": 302, "datetime": "…Z", …}`.
    Entries without a figure (`null`) are left out. BadGateway when the source fails."""
    endpoint, key, params = "history", "history", {"zone": zone}
    if since is not None:
        endpoint, key = "past-range", "data"
        params |= {"start": _iso(since), "end": _iso(until or datetime.now(UTC))}
    target = f"{url.rstrip('/')}/v3/carbon-intensity/{endpoint}"
    try:
        if http is None:
            with httpx.Client(timeout=10.0) as client:
                response = client.get(target, params=params, headers={"auth-token": token} if token else {})
        else:
            response = http.get(target, params=params, headers={"auth-token": token} if token else {})
        response.raise_for_status()
        body = response.json()
    except httpx.HTTPStatusError as exc:
        raise BadGateway(f"{target} answered HTTP {exc.response.status_code} for zone {zone}") from None
    except (httpx.HTTPError, ValueError) as exc:
        raise BadGateway(f"{target} did not answer with JSON for zone {zone}: {exc}") from None
    entries = body.get(key) if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise BadGateway(f"{target} answered without a `{key}` list for zone {zone}")
    rows, errors = [], []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("carbonIntensity") is None:
            continue
        try:
            rows.append({"zone": zone, "hour": parse_hour(str(entry.get("datetime", "")).replace(".000Z", "Z")),
                         "g_co2e_per_kwh": _intensity(entry["carbonIntensity"])})
        except ValueError as exc:
            errors.append(f"{key}[{index}]: {exc}")
    if errors:
        raise BadGateway(f"{target} gave unusable figures for zone {zone}, nothing stored: " + "; ".join(errors[:5]))
    return rows


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
