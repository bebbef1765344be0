"""`/metrics`: budget use for Prometheus alert rules (deploy/prometheus/kiln-alert-rules.yml).

`kiln_budget_used_ratio{tenant, budget}`: the running period's spend ÷ the budget's amount
(0.9 = 90 % used), read from the database at scrape time (the draft bill total, or the
tenant's rated usage in the budget's VDC), so every API replica exports the same value. A
ratio is a measurement for alerting, not money: it is exported as a float.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlmodel import Session, select

from kiln.db import utcnow
from kiln.models import Tenant
from metering.budgets import CarbonContext, spend
from metering.models import Budget
from metering.periods import period_of


class BudgetExposition(Collector):
    """A prometheus_client collector over the budgets and the running period's bills."""

    def __init__(self, engine: Engine, carbon: CarbonContext | None = None) -> None:
        self.engine = engine
        self.carbon = carbon  # for emissions budgets (KILN_CARBON_ZONE, KILN_EMBODIED_EMISSIONS)

    def describe(self) -> list[Metric]:
        """Nothing up front (no query when the collector is registered)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One sample per budget for the current period."""
        family = GaugeMetricFamily("kiln_budget_used_ratio",
                                   "Spend (or kg CO2e) of the running period divided by the budget amount",
                                   labels=["tenant", "budget"])
        period = period_of(utcnow())
        with Session(self.engine) as session:
            slugs = dict(session.exec(select(Tenant.id, Tenant.slug)).all())
            for budget in session.exec(select(Budget).order_by(Budget.id)).all():
                ratio = spend(session, budget, period, self.carbon) / budget.amount
                family.add_metric([slugs.get(budget.tenant_id, "?"), budget.name], float(ratio))
        yield family
