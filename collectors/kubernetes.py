"""Kubernetes collector: GPU nodes, tenant namespaces and pods' resource requests as intervals.

One target, the cluster's API server. The first `collect()` lists nodes, namespaces and pods
(paged); later ones only watch each kind from the last resourceVersion for `watch_seconds`
(the three watches run at once; a watch that delivered `busy_events` or more is followed by
another at once, for up to `drain_seconds`, so a backlog is drained in one cycle), and list
again when the API server answers 410 Gone (the version left its watch cache). The collector instance keeps that state between cycles, so
the worker must keep it too. API errors, expired or invalid tokens and unreachable servers
give a failed TargetResult with a readable reason, never an exception.

Samples (source `kubernetes`); node metrics use kube-state-metrics' names and labels:

| metric | entity | unit | labels |
| --- | --- | --- | --- |
| `kube_node_status_capacity`, `kube_node_status_allocatable` | node | count, cores, bytes | resource (`nvidia_com_gpu`, `amd_com_gpu`, MIG profiles such as `nvidia_com_mig_3g_40gb`, `cpu`, `memory`), unit (`integer`, `core`, `byte`) |
| `kube_node_status_condition` | node | state | condition (Ready, MemoryPressure, ...), status (`true`/`false`/`unknown`): 1 for the current status, 0 for the others |
| `kube_node_info` | node | info (1) | internal_ip, kernel_version, os_image, container_runtime_version, kubelet_version, system_uuid, provider_id (those the node reports) |
| `kube_node_spec_unschedulable` | node | state | |
| `kiln_k8s_namespace_tenant` | namespace | info (1) | namespace, tenant (the `kube_tenant_label` label's value, "" when unlabelled) |
| `kiln_k8s_pod_allocation` | namespace | count, cores, bytes | namespace, tenant, pod, pod_uid, node, resource, quantity, limit (exact decimals), starts_at, ends_at (ISO-8601, "" while running); value = the request |
| `kiln_k8s_pods_tracked` | the API server URL | count | marks a complete result: every live pod's intervals are in it |

Complete results are not sent every cycle: at 100,000 pods comparing every interval with its
row costs seconds of CPU when nothing changed. A result is complete after a list, after a
namespace's tenant label changed, every `full_every`, and until the worker says it was stored
(`persisted()`, called by `collectors.cycle.run_cycle` after the commit); otherwise it carries
only the pods that changed since the last stored result (and those of a result not yet stored),
with no `kiln_k8s_pods_tracked` sample, so the store compares only those.

A pod's request of a resource is Kubernetes' effective request: max(sum over app containers
and sidecars, largest init container) + pod overhead (a missing request defaults to the
limit). It becomes an interval once the pod is bound to a node: it starts at
`status.startTime` (else when the pod was scheduled) and ends when the pod finished (latest
container `finishedAt`; else when Kiln first saw phase Succeeded/Failed) or when it
disappeared from the API (the time Kiln saw it go). Ended intervals of deleted pods are
still reported for `ended_retention`, so a failed persist does not lose them.
`collectors.cluster_store.persist_kubernetes` turns the samples into `k8s_allocation` rows.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.utils.quantity import parse_quantity
from kubernetes.watch.watch import iter_resp_lines

from collectors import mig_profiles
from collectors.base import Sample, TargetResult
from collectors.kube_pods import RESOURCES, SOURCE, PodInterval, TrackedPod, interval_sample, resource_unit
from kiln.db import utcnow
from kiln.settings import ConfigError, Settings

log = logging.getLogger(__name__)

CONDITION_STATUSES = ("true", "false", "unknown")
TRACKED_METRIC = "kiln_k8s_pods_tracked"
KINDS = ("nodes", "namespaces", "pods")
LISTERS: dict[str, str] = {"nodes": "list_node", "namespaces": "list_namespace",
                           "pods": "list_pod_for_all_namespaces"}


class ResourceExpired(Exception):
    """The watch's resourceVersion is gone from the API server's cache (410): list again."""


def describe_api_error(exc: BaseException, host: str) -> str:
    """A readable one-line reason for a failed Kubernetes API call."""
    if isinstance(exc, ApiException):
        try:
            message = str((json.loads(exc.body or "") or {}).get("message") or "")
        except (ValueError, AttributeError):
            message = ""
        if exc.status == 401:
            return f"Kubernetes API {host} rejected the credentials (401 Unauthorized): the token is invalid or expired"
        if exc.status == 403:
            return f"Kubernetes API {host} refused access (403 Forbidden): {message or exc.reason}"
        if not exc.status:  # TLS and other client-side failures
            return f"Kubernetes API {host}: " + " ".join(str(exc.reason or exc).split())
        return f"Kubernetes API {host} answered HTTP {exc.status} {exc.reason or ''}".rstrip() + \
            (f": {message}" if message else "")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        reason = getattr(exc, "reason", None) or exc
        return f"cannot reach Kubernetes API {host}: {reason}"
    return f"Kubernetes API {host}: unreadable answer: {exc}"


def _timed_out(exc: BaseException) -> bool:
    return any(isinstance(e, urllib3.exceptions.TimeoutError) for e in (exc, getattr(exc, "reason", None)))


class KubernetesCollector:
    """Nodes, tenant namespaces and pod allocation intervals of one cluster, list-then-watch."""

    name = SOURCE

    def __init__(self, core: k8s.CoreV1Api, *, tenant_label: str = "kiln.io/tenant", watch_seconds: int = 1,
                 page_size: int = 500, request_timeout: float = 30.0,
                 ended_retention: timedelta = timedelta(hours=1), full_every: timedelta = timedelta(minutes=15),
                 busy_events: int = 200, drain_seconds: float = 30.0,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.core, self.tenant_label, self.clock = core, tenant_label, clock
        self.watch_seconds, self.page_size, self.request_timeout = watch_seconds, page_size, request_timeout
        self.ended_retention, self.full_every = ended_retention, full_every
        self.busy_events, self.drain_seconds = busy_events, drain_seconds
        self.target = core.api_client.configuration.host
        self.resource_versions: dict[str, str | None] = dict.fromkeys(KINDS)
        self.calls: Counter[tuple[str, str]] = Counter()  # ("list"|"watch"|"gone", kind) -> count
        self._nodes: dict[str, dict[str, Any]] = {}
        self._namespaces: dict[str, dict[str, Any]] = {}
        self._pods: dict[str, TrackedPod] = {}
        self._healthy = True
        self._changed: set[str] = set()  # pods changed since the last result
        self._unstored: set[str] = set()  # pods of the last partial result, until persisted() says it was stored
        self._full_due, self._full_sent, self._last_full = True, False, None
        self._answered = False  # the last collect() gave samples (persisted() refers to them)

    def persisted(self) -> None:
        """The last result is stored: later results may carry only what changes from here."""
        if not self._answered:
            return
        if self._full_sent:
            self._full_due, self._full_sent, self._last_full = False, False, self.clock()
        self._unstored.clear()

    def collect(self) -> list[TargetResult]:
        """Bring the cluster view up to date (list or watch) and report it as samples."""
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(len(KINDS), thread_name_prefix="kiln-k8s") as pool:
                for _ in pool.map(self._sync, KINDS):
                    pass
            samples = self._samples(self.clock())
        except (ApiException, urllib3.exceptions.HTTPError, ValueError, KeyError, TypeError) as exc:
            reason = describe_api_error(exc, self.target)
            self._transition(False, reason)
            self._answered = False
            return [TargetResult(self.target, ok=False, error=reason, seconds=time.monotonic() - started,
                                 timed_out=_timed_out(exc))]
        self._transition(True, "")
        self._answered = True
        return [TargetResult(self.target, ok=True, samples=samples, seconds=time.monotonic() - started)]

    def intervals(self, uids: set[str] | None = None) -> list[PodInterval]:
        """Every interval the collector currently knows (live pods and recently deleted ones), or
        those of the pods `uids`."""
        out = []
        for uid, tracked in self._pods.items():
            if uids is not None and uid not in uids:
                continue
            tenant = self._tenant_of(self._namespaces.get(tracked.namespace))
            out.extend(tracked.intervals(ended_at=tracked.terminal_seen_at or tracked.deleted_at, tenant=tenant))
        return out

    def _tenant_of(self, namespace: Mapping[str, Any] | None) -> str | None:
        return (((namespace or {}).get("metadata") or {}).get("labels") or {}).get(self.tenant_label)

    def close(self) -> None:
        """Close the API client's connections."""
        self.core.api_client.close()

    def _sync(self, kind: str) -> None:
        since = self.resource_versions[kind]
        if since is None:
            self._list(kind)
            return
        try:
            deadline = time.monotonic() + self.drain_seconds
            # a watch that was still busy when it timed out has a backlog behind it: drain it in this cycle
            while self._watch(kind, self.resource_versions[kind] or since) >= self.busy_events and time.monotonic() < deadline:
                pass
        except (ResourceExpired, ApiException) as exc:
            if isinstance(exc, ApiException) and exc.status != 410:
                raise
            self._gone(kind)

    def _gone(self, kind: str) -> None:
        self.calls[("gone", kind)] += 1
        log.info("Kubernetes: %s watch expired (410 Gone); listing again", kind)
        self._list(kind)

    def _list(self, kind: str) -> None:
        self.calls[("list", kind)] += 1
        version, now = None, self.clock()
        seen: dict[str, Any] = {}
        for items, version in self._pages(kind):
            for raw in items:  # pods summarised page by page: raw pods never pile up
                if kind == "pods":
                    uid = raw["metadata"]["uid"]
                    seen[uid] = self._summarise(self._pods.get(uid), raw, now)
                else:
                    seen[raw["metadata"]["name"]] = raw
        if kind == "pods":
            for uid, gone in self._pods.items():  # deleted while we were not watching
                if uid not in seen:
                    gone.deleted_at = gone.deleted_at or now
                    seen[uid] = gone
        setattr(self, f"_{kind}", seen)
        self.resource_versions[kind] = version
        self._full_due = True

    def _pages(self, kind: str) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """(items, the list's resourceVersion) of each page of a paged list."""
        token = None
        while True:
            resp = getattr(self.core, LISTERS[kind])(limit=self.page_size, _continue=token, _preload_content=False,
                                                     _request_timeout=self.request_timeout)
            try:
                page = json.loads(resp.data)
            finally:
                resp.release_conn()
            yield page.get("items") or [], page["metadata"].get("resourceVersion")
            token = page["metadata"].get("continue")
            if not token:
                return

    def _watch(self, kind: str, since: str) -> int:
        """Apply the events of one watch from `since` (until the server ends it); how many changes
        (bookmarks not counted)."""
        self.calls[("watch", kind)] += 1
        events = 0
        resp = getattr(self.core, LISTERS[kind])(
            watch=True, resource_version=since, allow_watch_bookmarks=True, timeout_seconds=self.watch_seconds,
            _preload_content=False, _request_timeout=(self.request_timeout, self.watch_seconds + self.request_timeout))
        try:
            for line in iter_resp_lines(resp):
                if line.strip():
                    event = json.loads(line)
                    self._apply(kind, event)
                    events += event.get("type") != "BOOKMARK"
        finally:
            resp.close()
            resp.release_conn()
        return events

    def _apply(self, kind: str, event: Mapping[str, Any]) -> None:
        kind_of_event, raw = event.get("type"), event.get("object") or {}
        if kind_of_event == "ERROR":
            if raw.get("code") == 410:
                raise ResourceExpired(raw.get("message"))
            raise ApiException(status=raw.get("code"), reason=raw.get("message"))
        meta = raw.get("metadata") or {}
        now = self.clock()
        if kind_of_event in ("ADDED", "MODIFIED", "DELETED"):
            if kind == "pods":
                tracked = self._pods[meta["uid"]] = self._summarise(self._pods.get(meta["uid"]), raw, now)
                if kind_of_event == "DELETED":
                    tracked.deleted_at = tracked.deleted_at or now
                self._changed.add(meta["uid"])
            else:
                objects = getattr(self, f"_{kind}")
                before = objects.get(meta["name"])
                if kind_of_event == "DELETED":
                    objects.pop(meta["name"], None)
                else:
                    objects[meta["name"]] = raw
                relabelled = kind_of_event == "MODIFIED" and self._tenant_of(before) != self._tenant_of(raw)
                if kind == "namespaces" and before is not None and relabelled:
                    self._full_due = True  # every pod of the namespace has a new tenant (a new namespace has none yet)
        if meta.get("resourceVersion"):
            self.resource_versions[kind] = meta["resourceVersion"]

    @staticmethod
    def _summarise(previous: TrackedPod | None, raw: dict[str, Any], now: datetime) -> TrackedPod:
        """The pod's new summary, keeping when Kiln first saw it finish or go."""
        tracked = TrackedPod.of(raw)
        if previous is not None:
            tracked.terminal_seen_at, tracked.deleted_at = previous.terminal_seen_at, previous.deleted_at
        if tracked.terminal and tracked.terminal_seen_at is None:
            tracked.terminal_seen_at = now
        return tracked

    def _samples(self, now: datetime) -> list[Sample]:
        cutoff = now - self.ended_retention
        self._pods = {uid: p for uid, p in self._pods.items() if p.deleted_at is None or p.deleted_at >= cutoff}
        out: list[Sample] = []
        for name, node in self._nodes.items():
            out.extend(node_samples(name, node, now))
        for name, namespace in self._namespaces.items():
            out.append(Sample(SOURCE, name, "kiln_k8s_namespace_tenant", 1.0, "info",
                              {"namespace": name, "tenant": self._tenant_of(namespace) or ""}, now))
        full = self._full_due or self._last_full is None or now - self._last_full >= self.full_every
        if full:
            self._full_sent, self._unstored = True, set()
            out.extend(interval_sample(interval, now) for interval in self.intervals())
            out.append(Sample(SOURCE, self.target, TRACKED_METRIC, float(len(self._pods)), "count", {}, now))
        else:
            self._unstored |= self._changed
            out.extend(interval_sample(interval, now) for interval in self.intervals(self._unstored))
        self._changed = set()
        return out

    def _transition(self, healthy: bool, reason: str) -> None:
        """Log when the API starts failing and when it recovers, not on every cycle."""
        if self._healthy != healthy:
            if healthy:
                log.info("Kubernetes: %s answers again", self.target)
            else:
                log.warning("Kubernetes: %s failed: %s", self.target, reason)
        self._healthy = healthy


def node_samples(name: str, node: Mapping[str, Any], ts: datetime) -> list[Sample]:
    """kube-state-metrics-style capacity, allocatable, condition and unschedulable samples of one node."""
    status, out = node.get("status") or {}, []
    for metric, key in (("kube_node_status_capacity", "capacity"), ("kube_node_status_allocatable", "allocatable")):
        amounts = status.get(key) or {}
        for resource in [*RESOURCES, *sorted(r for r in amounts if mig_profiles.is_mig_resource(r))]:
            if resource in amounts:
                unit_label, unit = resource_unit(resource)
                labels = {"resource": re.sub(r"[^a-zA-Z0-9_]", "_", resource), "unit": unit_label}
                out.append(Sample(SOURCE, name, metric, float(parse_quantity(amounts[resource])), unit, labels, ts))
    for condition in status.get("conditions") or []:
        current = str(condition.get("status", "Unknown")).lower()
        for value in CONDITION_STATUSES:
            labels = {"condition": condition.get("type", ""), "status": value}
            out.append(Sample(SOURCE, name, "kube_node_status_condition", float(current == value), "state", labels, ts))
    unschedulable = bool((node.get("spec") or {}).get("unschedulable"))
    out.append(Sample(SOURCE, name, "kube_node_spec_unschedulable", float(unschedulable), "state", {}, ts))
    out.append(Sample(SOURCE, name, "kube_node_info", 1.0, "info", node_info_labels(node), ts))
    return out


def node_info_labels(node: Mapping[str, Any]) -> dict[str, str]:
    """kube-state-metrics' `kube_node_info` labels (the ones present): the node's InternalIP
    places GPU exporter series whose only clue is the scrape target's address."""
    status, spec = node.get("status") or {}, node.get("spec") or {}
    info = status.get("nodeInfo") or {}
    labels = {"internal_ip": next((a.get("address", "") for a in status.get("addresses") or []
                                   if a.get("type") == "InternalIP"), ""),
              "kernel_version": info.get("kernelVersion", ""), "os_image": info.get("osImage", ""),
              "container_runtime_version": info.get("containerRuntimeVersion", ""),
              "kubelet_version": info.get("kubeletVersion", ""), "system_uuid": info.get("systemUUID", ""),
              "provider_id": spec.get("providerID", "")}
    return {key: str(value) for key, value in labels.items() if value}


def build(settings: Settings) -> KubernetesCollector | None:
    """The collector for the cluster in `KILN_KUBECONFIG`, or None when that is unset."""
    if not settings.kubeconfig:
        return None
    configuration = k8s.Configuration()
    try:
        k8s_config.load_kube_config(config_file=settings.kubeconfig, client_configuration=configuration)
    except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"KILN_KUBECONFIG {settings.kubeconfig}: cannot load it: {exc}") from None
    configuration.retries = 1  # fail fast: the next cycle tries again
    return KubernetesCollector(k8s.CoreV1Api(k8s.ApiClient(configuration)), tenant_label=settings.kube_tenant_label)
