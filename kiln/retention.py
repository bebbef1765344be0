"""Retention of chart rollups and health history: what is kept, how long, and how it is removed.

`KILN_ROLLUP_RETENTION_DAYS` bounds `rollup_5m`; `KILN_HEALTH_HISTORY_RETENTION_DAYS` bounds
the health history: BMC log entries, sensor threshold crossings, BMC losses and XID errors in
node histories (`node_event` kinds `bmc_log`, `sensor`, `bmc`, `xid`; provisioning and edit
events are kept), GPUs' XID errors (`gpu_xid_event`) and readings of series no longer reported (`health_snapshot` rows not
updated since). `kiln worker` enforces them daily: on PostgreSQL whole monthly partitions of
`rollup_5m` are dropped first, then the remaining older rows are deleted in chunks (short
transactions that do not hold up the collectors). `kiln doctor` warns when older rows remain,
i.e. when the job is not running. Usage records are billing data and are never expired: old
months are archived by detaching their partitions (see kiln.partitions).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, bindparam, text

from collectors.health_events import HEALTH_EVENT_KINDS
from collectors.redfish_store import LOG_EVENT_KIND
from kiln.db import UTCDateTime
from kiln.partitions import drop_months_before
from kiln.settings import Settings

INTERVAL = 86400  # seconds between runs of the worker's retention job
GRACE = timedelta(seconds=2 * INTERVAL)  # doctor: older rows are expected until the next run
CHUNK = 5000


@dataclass(frozen=True)
class Retained:
    """A table (or part of one) whose rows expire after a number of days set by a setting."""

    table: str
    column: str  # the row's time
    setting: str  # a Settings field holding days; 0 keeps rows forever
    condition: str = "TRUE"  # which rows of the table it covers
    key: str = "id"  # a unique column: deletes go in chunks of it

    def days(self, settings: Settings) -> int:
        """The configured retention in days (0: forever)."""
        return int(getattr(settings, self.setting))

    @property
    def env(self) -> str:
        """The setting's environment variable."""
        return f"KILN_{self.setting.upper()}"


RETAINED = (
    Retained("rollup_5m", "bucket", "rollup_retention_days"),
    Retained("node_event", "at", "health_history_retention_days",
             "kind IN ({})".format(", ".join(f"'{k}'" for k in (LOG_EVENT_KIND, *HEALTH_EVENT_KINDS)))),
    Retained("gpu_xid_event", "at", "health_history_retention_days"),
    Retained("health_snapshot", "observed_at", "health_history_retention_days"),
    Retained("fleet_power_5m", "bucket", "rollup_retention_days", key="bucket"),  # sums of rollup_5m
)


@dataclass(frozen=True)
class Removed:
    """What one retention run removed from one table."""

    table: str
    rows: int
    partitions: list[str]


def enforce_retention(engine: Engine, settings: Settings, now: datetime, chunk: int = CHUNK) -> list[Removed]:
    """Remove every row older than its retention; returns what was removed per table."""
    removed = []
    for retained in RETAINED:
        days = retained.days(settings)
        if not days:
            continue
        cutoff = now - timedelta(days=days)
        with engine.begin() as connection:
            partitions = drop_months_before(connection, retained.table, cutoff)
        # the outer condition too: on a partitioned table it prunes the id lookups to the old months
        rows, expired = 0, f"{retained.column} < :cutoff AND {retained.condition}"
        while True:
            with engine.begin() as connection:
                deleted = connection.execute(text(
                    f"DELETE FROM {retained.table} WHERE {expired} AND {retained.key} IN "
                    f"(SELECT {retained.key} FROM {retained.table} WHERE {expired} LIMIT :chunk)"
                ).bindparams(bindparam("cutoff", type_=UTCDateTime)), {"cutoff": cutoff, "chunk": chunk}).rowcount
            rows += deleted
            if deleted < chunk:
                break
        removed.append(Removed(retained.table, rows, partitions))
    return removed


@dataclass(frozen=True)
class Overdue:
    """How one table stands against its retention: its oldest covered row, if any is too old."""

    retained: Retained
    days: int
    oldest: datetime | None
    overdue: bool


def retention_status(engine: Engine, settings: Settings, now: datetime) -> list[Overdue]:
    """For each retained table, its oldest covered row and whether it outlived the retention
    (plus a grace of two job intervals); a table kept forever is never overdue."""
    found = []
    with engine.connect() as connection:
        for retained in RETAINED:
            days = retained.days(settings)
            oldest = connection.execute(text(
                f"SELECT min({retained.column}) AS oldest FROM {retained.table} WHERE {retained.condition}"
            ).columns(oldest=UTCDateTime)).scalar()
            overdue = bool(days and oldest and oldest < now - timedelta(days=days) - GRACE)
            found.append(Overdue(retained, days, oldest, overdue))
    return found
