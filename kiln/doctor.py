"""`kiln doctor`: can this Kiln reach every peer it is configured to use?

One check per peer, each bounded by a timeout and independent of the others: the database
(its schema, and a warning per table holding rows older than its retention), Prometheus, Ironic, the Kubernetes API, OpenCost, the OIDC issuer, and a
sample of the enrolled nodes' BMCs through the IPMI collector. A peer whose setting is unset is
reported as "not configured" and never fails the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

import httpx
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from kiln.db import create_db_engine, utcnow
from kiln.schema import schema_status
from kiln.settings import ConfigError, Settings, resolve_secret_key

STATUS_OK, STATUS_FAILED, STATUS_UNCONFIGURED = "ok", "failed", "not configured"
STATUS_WARNING = "warning"  # shown, but does not fail the run
BMC_SAMPLE = 5


@dataclass(frozen=True)
class Check:
    """The outcome of checking one peer (or one BMC)."""

    peer: str
    target: str
    status: str  # ok | failed | not configured | warning
    detail: str
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """The check as JSON-ready data (`kiln doctor --output json`)."""
        return {**asdict(self), "seconds": round(self.seconds, 3)}


class PeerFailed(Exception):
    """A check's peer did not answer as expected; the message says how."""


def _timed(peer: str, target: str, probe: Callable[[], str]) -> Check:
    started = time.monotonic()
    try:
        detail, status = probe(), STATUS_OK
    except PeerFailed as exc:
        detail, status = str(exc), STATUS_FAILED
    except httpx.TimeoutException:
        detail, status = "no answer within the timeout", STATUS_FAILED
    except httpx.HTTPError as exc:
        detail, status = f"unreachable: {exc}", STATUS_FAILED
    return Check(peer, target, status, detail, time.monotonic() - started)


def _get_json(client: httpx.Client, url: str) -> object:
    response = client.get(url)
    if response.status_code != 200:
        raise PeerFailed(f"HTTP {response.status_code} from {url}")
    try:
        return response.json()
    except ValueError:
        raise PeerFailed(f"{url} did not answer JSON") from None


def check_database(settings: Settings) -> Check:
    """Connect, run a query and compare the schema with this Kiln's migrations."""
    url = settings.resolved_database_url
    shown = make_url(url).render_as_string(hide_password=True)

    def probe() -> str:
        engine = create_db_engine(url)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
                server = "SQLite" if engine.dialect.name == "sqlite" else "PostgreSQL " + str(
                    connection.execute(text("SHOW server_version")).scalar())
            status = schema_status(engine)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise PeerFailed(f"cannot connect: {reason}") from None
        finally:
            engine.dispose()
        problem = status.problem()
        if problem:
            raise PeerFailed(f"{server}: {problem}")
        return f"{server}, schema {status.current} (current)"

    return _timed("database", shown, probe)


def check_prometheus(client: httpx.Client, url: str) -> str:
    """Prometheus' readiness endpoint, or (Thanos/Mimir) a trivial query."""
    base = url.rstrip("/")
    response = client.get(f"{base}/-/ready")
    if response.status_code == 200:
        return "ready"
    data = _get_json(client, f"{base}/api/v1/query?query=vector(1)")
    if not isinstance(data, dict) or data.get("status") != "success":
        raise PeerFailed(f"{base}/-/ready answered HTTP {response.status_code} and a query failed")
    return "answers queries"


def check_ironic(client: httpx.Client, url: str) -> str:
    """Ironic's API root lists its versions."""
    data = _get_json(client, url.rstrip("/") + "/")
    default = data.get("default_version") if isinstance(data, dict) else None
    if not isinstance(default, dict):
        raise PeerFailed("the answer is not Ironic's API root (no default_version)")
    return f"Ironic API {default.get('version', '?')} (min {default.get('min_version', '?')})"


def check_opencost(client: httpx.Client, url: str) -> str:
    """OpenCost's allocation API answers for the last hour."""
    from collectors.opencost import OpenCostError, parse_allocation_response

    response = client.get(url.rstrip("/") + "/allocation/compute",
                          params={"window": "1h", "aggregate": "namespace", "accumulate": "true"})
    if response.status_code != 200:
        raise PeerFailed(f"HTTP {response.status_code} from the allocation API")
    try:
        records = parse_allocation_response(response.content)
    except OpenCostError as exc:
        raise PeerFailed(f"unexpected allocation answer: {exc}") from None
    return f"allocation API answers ({len(records)} namespaces in the last hour)"


def check_oidc(client: httpx.Client, issuer: str) -> str:
    """The issuer's discovery document names the same issuer and a JWKS URL."""
    data = _get_json(client, issuer.rstrip("/") + "/.well-known/openid-configuration")
    if not isinstance(data, dict) or "jwks_uri" not in data:
        raise PeerFailed("the discovery document has no jwks_uri")
    if data.get("issuer", "").rstrip("/") != issuer.rstrip("/"):
        raise PeerFailed(f"the discovery document names issuer {data.get('issuer')!r}, not {issuer!r}")
    return f"discovery document OK (jwks_uri {data['jwks_uri']})"


def check_kubernetes(kubeconfig: str, timeout: float) -> str:
    """The API server's /version, with the kubeconfig's credentials."""
    from kubernetes import client as k8s  # imported when used: the client loads slowly
    from kubernetes import config as k8s_config
    from kubernetes.config.config_exception import ConfigException

    try:
        api = k8s_config.new_client_from_config(config_file=kubeconfig)
    except (ConfigException, OSError) as exc:
        raise PeerFailed(f"cannot use kubeconfig {kubeconfig}: {exc}") from None
    try:
        version = k8s.VersionApi(api).get_code(_request_timeout=timeout)
    except Exception as exc:  # urllib3 and ApiException: any failure to talk is the finding
        raise PeerFailed(f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    finally:
        api.close()
    return f"Kubernetes {version.git_version}"


def check_retention(settings: Settings, now: datetime) -> list[Check]:
    """Warn for each table that holds rows older than its retention (the worker's job is not running)."""
    from kiln.retention import retention_status

    engine = create_db_engine(settings.resolved_database_url)
    try:
        found = retention_status(engine, settings, now)
    except SQLAlchemyError:
        return [Check("retention", "", STATUS_FAILED, "cannot read the tables (see the database check)")]
    finally:
        engine.dispose()
    checks = []
    for status in found:
        table, oldest = status.retained.table, f"{status.oldest:%Y-%m-%d}" if status.oldest else "none"
        if not status.days:
            checks.append(Check("retention", table, STATUS_UNCONFIGURED, f"kept forever ({status.retained.env}=0)"))
        elif status.overdue:
            checks.append(Check("retention", table, STATUS_WARNING,
                                f"holds rows from {oldest}, older than its {status.days}-day retention "
                                f"({status.retained.env}): is `kiln worker` running its retention job?"))
        else:
            checks.append(Check("retention", table, STATUS_OK, f"oldest row {oldest}, within {status.days} days"))
    return checks


def check_utilisation_sums(settings: Settings) -> Check:
    """Warn when GPU utilisation samples are newer than the worker's `utilisation-days` job has
    summed (by more than it lags while it runs): the usage pages then read the samples instead."""
    from collectors.utilisation_days import NOT_YET_SUMMED, summed_status

    engine = create_db_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            newest, through = summed_status(session)
    except SQLAlchemyError:
        return Check("utilisation", "", STATUS_FAILED, "cannot read the tables (see the database check)")
    finally:
        engine.dispose()
    if newest is None:
        return Check("utilisation", "", STATUS_UNCONFIGURED, "no GPU utilisation samples")
    if through is None or newest - through >= NOT_YET_SUMMED:
        summed = f"summed per lease only up to {through:%H:%M} UTC" if through else "that day not summed per lease"
        return Check("utilisation", "lease_utilisation_day", STATUS_WARNING,
                     f"GPU utilisation samples up to {newest:%Y-%m-%d %H:%M} UTC, {summed}: is `kiln worker` running "
                     "its utilisation-days job? Until it catches up, usage pages read the samples (slow for a large fleet)")
    return Check("utilisation", "lease_utilisation_day", STATUS_OK, f"summed up to {through:%Y-%m-%d %H:%M} UTC")


def check_bmcs(settings: Settings, timeout: float, sample: int = BMC_SAMPLE) -> list[Check]:
    """Poll up to `sample` enrolled IPMI nodes' BMCs through the IPMI collector."""
    from collectors.ipmi import IpmiCollector
    from collectors.sources import ipmi_target
    from fleet.models import Node
    from kiln.security import SecretBox

    engine = create_db_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            nodes = session.exec(select(Node).where(Node.bmc_driver == "ipmi").order_by(Node.name).limit(sample)).all()
    except SQLAlchemyError:
        return [Check("bmc", "", STATUS_FAILED, "cannot read the node table (see the database check)")]
    finally:
        engine.dispose()
    if not nodes:
        return [Check("bmc", "", STATUS_UNCONFIGURED, "no IPMI nodes enrolled")]
    try:
        box: SecretBox | None = SecretBox(resolve_secret_key(settings))
    except ConfigError:
        box = None
    checks, targets = [], []
    for node in nodes:
        try:
            targets.append(ipmi_target(node, box))
        except ValueError as exc:
            checks.append(Check("bmc", node.name, STATUS_FAILED, str(exc)))
    if targets:
        with IpmiCollector(targets, timeout=timeout, retries=0, privilege=settings.ipmi_privilege) as collector:
            for result in collector.collect():
                address = next(f"{t.host}:{t.port}" for t in targets if t.node == result.target)
                detail = f"answers ({address})" + (f"; {result.error}" if result.error else "") if result.ok \
                    else result.error or "failed"
                checks.append(Check("bmc", result.target, STATUS_OK if result.ok else STATUS_FAILED, detail,
                                    result.seconds))
    return sorted(checks, key=lambda c: c.target)


def run_checks(settings: Settings, *, timeout: float = 5.0) -> list[Check]:
    """Every check, in a fixed order; unconfigured peers are listed as such."""
    checks = [check_database(settings)]
    http_peers: list[tuple[str, str | None, Callable[[httpx.Client, str], str]]] = [
        ("prometheus", settings.prometheus_url, check_prometheus),
        ("ironic", settings.ironic_url, check_ironic),
        ("opencost", getattr(settings, "opencost_url", None), check_opencost),
        ("oidc", settings.oidc_issuer, check_oidc),
    ]
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        for peer, url, probe in http_peers[:2]:
            checks.append(_unconfigured(peer) if not url else _timed(peer, url, lambda p=probe, u=url: p(client, u)))
        if settings.kubeconfig:
            checks.append(_timed("kubernetes", settings.kubeconfig,
                                 lambda: check_kubernetes(settings.kubeconfig or "", timeout)))
        else:
            checks.append(_unconfigured("kubernetes"))
        for peer, url, probe in http_peers[2:]:
            checks.append(_unconfigured(peer) if not url else _timed(peer, url, lambda p=probe, u=url: p(client, u)))
    if checks[0].status == STATUS_OK:
        checks.extend(check_retention(settings, utcnow()))
        checks.append(check_utilisation_sums(settings))
        checks.extend(check_bmcs(settings, timeout=min(timeout, 2.0)))
    else:
        checks.append(Check("bmc", "", STATUS_FAILED, "skipped: the database is unusable"))
    return checks


def _unconfigured(peer: str) -> Check:
    return Check(peer, "", STATUS_UNCONFIGURED, "not configured")
