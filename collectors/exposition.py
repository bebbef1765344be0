"""`/metrics` re-exports what the collectors stored, under the names people already graph.

IPMI series keep ipmi_exporter's names and labels, with `node` naming the node
(ipmi_exporter has the BMC in `instance`; Kiln knows the node): `ipmi_up{node,collector}`,
`ipmi_chassis_power_state{node}`, `ipmi_dcmi_power_consumption_watts{node}`,
`ipmi_temperature_celsius{node,id,name}`, `ipmi_fan_speed_rpm`, `ipmi_sensor_state`, ... Redfish
nodes' readings come under the same names (collectors/redfish.py), plus their `redfish_*`
series (`redfish_energy_kwh{node,from}`, `redfish_psu_input_watts`, ...). Only
readings from the last `stale_after` are exported, as ipmi_exporter exports only what the
current scrape read. `kiln_namespace_tenant_info{namespace,tenant}` joins dcgm-exporter's
`namespace` label to tenants in PromQL. Per (collector, target) state: `kiln_collector_target_up`,
`kiln_collector_last_success_timestamp_seconds`, `kiln_collector_consecutive_failures`, and
`kiln_collector_skipped_series{collector,target,reason}` (series its last collection left out).
The values are read from the database at scrape time, so the API process exports what any
worker replica collected.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample as PromSample
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from collectors.models import CollectorTargetState, HealthSnapshot
from fleet.health import BMC_SOURCES

NAMESPACE_TENANT = "kiln_k8s_namespace_tenant"  # the Kubernetes collector's namespace → tenant sample
HELP = {
    "ipmi_up": "1 if the part (collector label) of the node's BMC could be read",
    "ipmi_chassis_power_state": "Chassis power: 1 on, 0 off",
    "ipmi_dcmi_power_consumption_watts": "DCMI power reading of the node, watts",
    "ipmi_bmc_info": "BMC device id (constant 1; facts in labels)",
    "ipmi_fru_info": "FRU product and board facts (constant 1; facts in labels)",
}


class CollectorExposition(Collector):
    """A prometheus_client collector over `health_snapshot` and `collector_target_state`."""

    def __init__(self, engine: Engine, *, stale_after: timedelta = timedelta(minutes=5)) -> None:
        self.engine, self.stale_after = engine, stale_after

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on what was collected (no registry-time query)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every fresh IPMI and Redfish series and every target's collection state."""
        since = datetime.now(UTC) - self.stale_after
        with Session(self.engine) as session:
            snapshots = session.exec(select(HealthSnapshot).where(col(HealthSnapshot.source).in_(BMC_SOURCES),
                                                                  HealthSnapshot.observed_at >= since)
                                     .order_by(HealthSnapshot.metric, HealthSnapshot.entity)).all()
            namespaces = session.exec(select(HealthSnapshot).where(HealthSnapshot.metric == NAMESPACE_TENANT,
                                                                   HealthSnapshot.observed_at >= since)).all()
            states = session.exec(select(CollectorTargetState)
                                  .where(CollectorTargetState.last_attempt_at.is_not(None))
                                  .order_by(CollectorTargetState.collector, CollectorTargetState.target)).all()
        yield from _ipmi_families(snapshots)
        yield from _state_families(states)
        info = GaugeMetricFamily("kiln_namespace_tenant_info", "A Kubernetes namespace and the tenant its label names",
                                 labels=["namespace", "tenant"])
        for row in namespaces:
            if row.labels.get("tenant"):
                info.add_metric([row.entity, row.labels["tenant"]], 1.0)
        yield info


def _ipmi_families(snapshots: list[HealthSnapshot]) -> Iterator[Metric]:
    families: dict[str, GaugeMetricFamily] = {}
    for snap in snapshots:
        family = families.get(snap.metric)
        if family is None:
            named = "as ipmi_exporter names it" if snap.metric.startswith("ipmi_") else "from the BMC's Redfish service"
            help_text = HELP.get(snap.metric, f"{snap.metric} ({snap.unit}), {named}")
            family = families[snap.metric] = GaugeMetricFamily(snap.metric, help_text)
        value = math.nan if snap.value is None else snap.value
        # label sets differ within a family (e.g. `type` on generic sensors): add samples as they are
        family.samples.append(PromSample(snap.metric, {**snap.labels, "node": snap.entity}, value))
    yield from families.values()


def _state_families(states: list[CollectorTargetState]) -> Iterator[Metric]:
    labels = ["collector", "target"]
    up = GaugeMetricFamily("kiln_collector_target_up", "1 if the target answered in its last collection", labels=labels)
    last = GaugeMetricFamily("kiln_collector_last_success_timestamp_seconds",
                             "Unix time of the target's last successful collection", labels=labels)
    failures = GaugeMetricFamily("kiln_collector_consecutive_failures",
                                 "Failed collections of the target since its last success", labels=labels)
    skipped = GaugeMetricFamily("kiln_collector_skipped_series",
                                "Series the target's last collection left out, by reason", labels=[*labels, "reason"])
    for row in states:
        key = [row.collector, row.target]
        up.add_metric(key, 1.0 if row.up else 0.0)
        if row.last_success_at is not None:
            last.add_metric(key, row.last_success_at.timestamp())
        failures.add_metric(key, float(row.consecutive_failures))
        for reason, count in sorted((row.skipped or {}).items()):
            skipped.add_metric([*key, reason], float(count))
    yield from (up, last, failures, skipped)
