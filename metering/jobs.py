"""A periodic metering job: keep the running period's draft bills current and alerts flowing.

Each run rebuilds the current period's usage and drafts (exactly what `kiln bills run
--period <this month>` does), raises newly crossed budget and GPU-hours quota thresholds, and
retries undelivered alerts. It is built to be one of `kiln.worker`'s `Job`s (e.g. hourly).
With several worker replicas on PostgreSQL only one runs it at a time (a transaction-scoped
advisory lock); the others skip.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlmodel import Session

from kiln.auth import Principal
from kiln.db import utcnow
from kiln.settings import Settings
from metering.bills import run_period
from metering.budgets import CarbonContext, check_alerts, deliver_alerts
from metering.periods import period_of

log = logging.getLogger("metering.jobs")
ADVISORY_LOCK_KEY = 0x6B696C6E  # "kiln"


def draft_bills(settings: Settings, engine: Engine) -> Callable[[], None]:
    """The job body: run the current period's drafts and alerts in one transaction."""
    principal = Principal.system("worker")

    def run() -> None:
        period = period_of(utcnow())
        with Session(engine, expire_on_commit=False) as session:
            if engine.dialect.name == "postgresql":
                locked = session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}).scalar()
                if not locked:
                    log.debug("another worker is running the bills of %s", period)
                    return
            summary = run_period(session, principal, period, policy=settings.idle_cost_policy)
            raised = check_alerts(session, principal, period, carbon=CarbonContext.of(settings))
            sent = deliver_alerts(session, settings.budget_webhook_url, settings.budget_webhook_timeout)
            session.commit()
        log.debug("bills %s: %d drafts, %d new alerts, %d delivered", period, len(summary.drafts), len(raised), sent)

    return run
