"""The configured collectors of this Kiln, each with its targets, as the worker runs them.

A `Source` names what one collector polls (`targets`, read from the database or the settings)
and runs the collector on a subset of them (`collect`, the targets this replica claimed, told
which it still holds as it goes), so replicas can share the work (collectors/sharding.py). `extra_persist` stores what only that
source produces (Kubernetes allocations, OpenCost figures) beside the common persistence in
collectors/store.py. Sources are long-lived: IPMI sessions survive between cycles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, or_, select

from collectors import kubernetes, opencost
from collectors.base import SECOND_BMC_LABEL, Collector, Held, Progress, Sample, TargetResult
from collectors.cluster_store import persist_kubernetes, persist_opencost
from collectors.dcgm import DCGM
from collectors.exporter_scrape import ExporterScrapeCollector
from collectors.ipmi import IpmiCollector, IpmiTarget
from collectors.prometheus import GpuCollector, PrometheusClient
from collectors.redfish import RedfishCollector, RedfishTarget
from collectors.redfish_store import log_cursors, persist_redfish
from collectors.rocm import ROCM
from fleet.bmc import parse_bmc_address
from fleet.models import Node
from kiln.security import SecretBox
from kiln.settings import Settings

log = logging.getLogger(__name__)
Persist = Callable[[Session, Sequence[TargetResult]], object]
Collect = Callable[[Sequence[str], Progress | None, Held | None], list[TargetResult]]


@dataclass
class Source:
    """One collector as the scheduler sees it."""

    name: str
    interval: int
    targets: Callable[[Session], list[str]]
    collect: Collect  # the BMC sources skip a target once it is not `Held`; the others poll all
    extra_persist: Persist | None = None
    close: Callable[[], None] = field(default=lambda: None)
    persisted: Callable[[], None] = field(default=lambda: None)  # told after a cycle's results are committed


class BmcSource:
    """Every node whose BMC speaks `driver`, polled with its decrypted credentials by one
    long-lived collector (rebuilt only when the targets change, so BMC sessions survive)."""

    name = driver = ""

    def __init__(self, settings: Settings, box: SecretBox, *, one_shot: bool = False) -> None:
        """`one_shot`: the collector runs once (`kiln collect once`), not cycle after cycle."""
        self.settings, self.box, self.one_shot = settings, box, one_shot
        self._collector: Any = None
        self._key: tuple = ()

    def targets(self, session: Session) -> list[str]:
        """Names of the nodes whose BMC speaks this source's protocol."""
        return list(session.exec(select(Node.name).where(Node.bmc_driver == self.driver).order_by(Node.name)))

    def collect(self, names: Sequence[str], progress: Progress | None = None, *,
                session: Session, held: Held | None = None) -> list[TargetResult]:
        """Poll the named nodes' BMCs (those still `held` as their turn comes); a node whose
        credentials cannot be read fails alone."""
        nodes = session.exec(select(Node).where(Node.name.in_(list(names))).order_by(Node.name)).all()
        targets, failed = [], []
        for node in nodes:
            try:
                targets.append(self._target(node))
            except ValueError as exc:
                failed.append(TargetResult(node.name, ok=False, error=str(exc)))
        results = self._run(self._collector_for(tuple(targets)), progress, session, nodes, held) if targets else []
        for result in failed:
            if progress:
                progress(result)
        return results + failed

    def _target(self, node: Node) -> Any:
        raise NotImplementedError

    def _new_collector(self, targets: tuple) -> Any:
        raise NotImplementedError

    def _run(self, collector: Any, progress: Progress | None, session: Session, nodes: Sequence[Node],
             held: Held | None) -> list[TargetResult]:
        return collector.collect(progress, held)

    def _collector_for(self, targets: tuple) -> Any:
        if self._collector is not None and targets != self._key and hasattr(self._collector, "retarget"):
            self._collector.retarget(targets)  # other targets claimed: keep the sessions of the rest
            self._key = targets
        if self._collector is None or targets != self._key:
            self.close()
            self._collector = self._new_collector(targets)
            self._key = targets
        return self._collector

    def close(self) -> None:
        """Close the BMC sessions."""
        if self._collector is not None:
            self._collector.close()
            self._collector = None


class IpmiSource(BmcSource):
    """Every node with an `ipmi://` BMC, polled with its decrypted credentials."""

    name = driver = "ipmi"

    def _target(self, node: Node) -> IpmiTarget:
        return ipmi_target(node, self.box)

    def _new_collector(self, targets: tuple[IpmiTarget, ...]) -> IpmiCollector:
        s = self.settings
        return IpmiCollector(targets, workers=s.ipmi_workers, timeout=s.ipmi_timeout, retries=s.ipmi_retries,
                             cipher_suite=s.ipmi_cipher_suite, privilege=s.ipmi_privilege, facts_first=self.one_shot)


class RedfishSource(BmcSource):
    """Every node with a `redfish://` (or `redfish+http(s)://`) BMC, or an `ipmi://` one with a
    second, collection-only `redfish_address`; each poll stores only the BMC log entries after
    the newest one already stored (collectors/redfish_store.py). What a second address reports
    under the IPMI names carries `bmc="redfish"` (see `second_bmc`)."""

    name = driver = "redfish"

    def targets(self, session: Session) -> list[str]:
        """Names of the nodes with a Redfish BMC address, primary or second."""
        return list(session.exec(select(Node.name).where(or_(Node.bmc_driver == self.driver,
                                                             col(Node.redfish_address).is_not(None)))
                                 .order_by(Node.name)))

    def _target(self, node: Node) -> RedfishTarget:
        return redfish_target(node, self.box, verify=self.settings.redfish_verify_tls)

    def _new_collector(self, targets: tuple[RedfishTarget, ...]) -> RedfishCollector:
        s = self.settings
        return RedfishCollector(targets, timeout=s.redfish_timeout, target_timeout=s.redfish_target_timeout,
                                workers=s.redfish_workers)

    def _run(self, collector: RedfishCollector, progress: Progress | None, session: Session,
             nodes: Sequence[Node], held: Held | None) -> list[TargetResult]:
        results = collector.collect(progress, log_cursors=log_cursors(session, nodes), held=held)
        second = {n.name for n in nodes if n.bmc_driver != self.driver}
        return [second_bmc(r) if r.target in second else r for r in results]


def second_bmc(result: TargetResult) -> TargetResult:
    """A second BMC address's result: its series under the primary's names (`ipmi_*`) labelled
    `bmc="redfish"`, so they sit beside the IPMI collector's instead of replacing them."""
    def label(s: Sample) -> Sample:
        return s._replace(labels={**s.labels, SECOND_BMC_LABEL: "redfish"}) if s.metric.startswith("ipmi_") else s

    return replace(result, samples=[label(s) for s in result.samples])


def _bmc_password(node: Node, box: SecretBox | None) -> str:
    """The node's decrypted BMC password ('' without one); ValueError without a key to decrypt it."""
    if node.bmc_password_encrypted and box is None:
        raise ValueError("no secret key is configured to decrypt the BMC password")
    return box.decrypt(node.bmc_password_encrypted) if box and node.bmc_password_encrypted else ""


def ipmi_target(node: Node, box: SecretBox | None) -> IpmiTarget:
    """A node's BMC as the IPMI collector polls it (ValueError for a bad address, or an
    encrypted password and no secret key to decrypt it)."""
    address = parse_bmc_address(node.bmc_address)
    return IpmiTarget(node.name, address.host, address.effective_port, node.bmc_username or "",
                      _bmc_password(node, box), node.ipmi_cipher_suite, node.ipmi_privilege)


def redfish_target(node: Node, box: SecretBox | None, *, verify: bool = True) -> RedfishTarget:
    """A node's BMC as the Redfish collector polls it: the service URL and system path of its
    Redfish address, primary or else second, with the node's BMC credentials (ValueError as for
    `ipmi_target`)."""
    text = node.bmc_address if node.bmc_driver == "redfish" or not node.redfish_address else node.redfish_address
    address = parse_bmc_address(text)
    if address.driver != "redfish":
        raise ValueError(f"BMC address {text!r} is not a Redfish address")
    return RedfishTarget(node.name, address.base_url, node.bmc_username or "", _bmc_password(node, box),
                         verify=verify, system=address.path.rstrip("/"))


def _reporting(collect: Callable[[Sequence[str]], list[TargetResult]]) -> Collect:
    """`collect(names)` that also reports each result to the progress callback (one call
    polls every target: a lost lease drops its results before storing instead)."""
    def run(names: Sequence[str], progress: Progress | None, _held: Held | None = None) -> list[TargetResult]:
        results = collect(names)
        for result in results:
            if progress:
                progress(result)
        return results

    return run


def single_target_source(collector: Collector, interval: int, persist: Persist | None = None, *,
                         target: str | None = None) -> Source:
    """A collector with one target (a Prometheus query, an API server): no sharing to do."""
    name = target or collector.target
    return Source(collector.name, interval, lambda _session: [name], _reporting(lambda _names: collector.collect()),
                  persist, getattr(collector, "close", lambda: None), getattr(collector, "persisted", lambda: None))


def build_sources(settings: Settings, engine: Engine, box: SecretBox, *, one_shot: bool = False) -> dict[str, Source]:
    """Every collector this Kiln's settings configure, by name (IPMI and Redfish always);
    `one_shot` for a single collection (the IPMI hardware facts then come in its one poll)."""
    sources = {}
    for bmc, interval, persist in ((IpmiSource(settings, box, one_shot=one_shot), settings.ipmi_interval, None),
                                   (RedfishSource(settings, box, one_shot=one_shot), settings.redfish_interval,
                                    persist_redfish)):
        def bmc_collect(names: Sequence[str], progress: Progress | None, held: Held | None = None,
                        bmc: BmcSource = bmc) -> list[TargetResult]:
            with Session(engine) as session:
                return bmc.collect(names, progress, session=session, held=held)

        sources[bmc.name] = Source(bmc.name, interval, bmc.targets, bmc_collect, persist, close=bmc.close)
    for module, persist, interval in ((kubernetes, persist_kubernetes, settings.kube_interval),
                                      (opencost, persist_opencost, settings.opencost_interval)):
        collector = module.build(settings)
        if collector is not None:
            sources[collector.name] = single_target_source(collector, interval, persist)
    dcgm, rocm = (exporter.labelled(Settings.names(settings.gpu_namespace_labels),
                                    Settings.names(settings.gpu_host_labels)) for exporter in (DCGM, ROCM))
    for urls, table in ((settings.dcgm_exporter_urls, dcgm), (settings.rocm_exporter_urls, rocm)):
        if urls:
            scrape = ExporterScrapeCollector([u.strip() for u in urls.split(",") if u.strip()], table)
            sources[scrape.name] = Source(scrape.name, settings.gpu_interval, lambda _s, c=scrape: list(c.urls),
                                          _reporting(lambda names, c=scrape: c.collect(names)), close=scrape.close)
    if settings.prometheus_url:
        client = PrometheusClient(settings.prometheus_url)
        lookback = timedelta(seconds=max(300, 3 * settings.prometheus_scrape_interval))
        for collector in (GpuCollector(client, dcgm, lookback=lookback), GpuCollector(client, rocm, lookback=lookback)):
            target = f"{collector.client.url} ({collector.name})"
            sources[collector.name] = single_target_source(collector, settings.gpu_interval, target=target)
    return sources
