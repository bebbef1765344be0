"""The OpenCost collector against a fixture server answering in OpenCost's documented shape.

OpenCost itself cannot run here; `tests/opencost_fixture.py` serves its `/allocation/compute`
response shape (see that module for the documentation it follows) over real HTTP.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.base import TargetResult
from collectors.cluster_store import persist_opencost
from collectors.cycle import run_cycle
from collectors.models import CollectorTargetState, HealthSnapshot, OpenCostAllocation
from collectors.opencost import OpenCostCollector, build
from collectors.sources import build_sources
from kiln.security import SecretBox
from kiln.settings import Settings
from tests.opencost_fixture import OpenCostFixture, opencost_server

NOW = datetime(2026, 3, 1, 2, 17, 41, tzinfo=UTC)
H0, H1, H2 = (datetime(2026, 3, 1, h, tzinfo=UTC) for h in (0, 1, 2))


@pytest.fixture
def opencost() -> Iterator[OpenCostFixture]:
    """A fresh fixture server per test."""
    with opencost_server() as server:
        yield server


def collector(url: str, *, step: str = "1h", lookback: int = 2, timeout: float = 5.0,
              now: datetime = NOW) -> OpenCostCollector:
    """A collector whose clock stands at `now`."""
    return OpenCostCollector(httpx.Client(base_url=url, timeout=timeout), step=step, lookback_steps=lookback,
                             clock=lambda: now)


def collect_one(c: OpenCostCollector) -> TargetResult:
    """Collect and return the single target's result."""
    results = list(c.collect())
    assert len(results) == 1
    return results[0]


def value(result: TargetResult, namespace: str, field: str, start: datetime) -> tuple[str, float]:
    """(exact label, float value) of one field of one namespace's window."""
    found = [s for s in result.samples if s.entity == namespace and s.metric == f"opencost_allocation_{field}"
             and s.labels["window_start"] == start.isoformat()]
    assert len(found) == 1, (namespace, field, start, found)
    return found[0].labels["exact"], found[0].value


def test_asks_for_complete_steps_with_documented_parameters(opencost: OpenCostFixture) -> None:
    opencost.serve_file("namespaces_1h.json")
    assert collect_one(collector(opencost.url)).ok
    assert opencost.requests == [("/allocation/compute", {
        "window": "2026-03-01T00:00:00Z,2026-03-01T02:00:00Z", "aggregate": "namespace", "step": "1h",
        "accumulate": "false", "includeIdle": "true"})]


def test_parses_exact_values_of_every_step(opencost: OpenCostFixture) -> None:
    opencost.serve_file("namespaces_1h.json")
    result = collect_one(collector(opencost.url))
    assert result.ok and result.error is None
    assert value(result, "team-a", "total_cost", H0) == ("12.77145", 12.77145)
    assert value(result, "team-a", "network_cost", H1) == ("0.00021", 0.00021)
    assert value(result, "team-b", "cpu_core_hours", H1) == ("4.25", 4.25)
    assert value(result, "team-b", "ram_byte_hours", H0) == ("68719476736", 68719476736.0)
    assert value(result, "team-b", "total_efficiency", H0)[0] == "0.30071"
    windows = {(s.entity, s.labels["window_start"], s.labels["window_end"]) for s in result.samples}
    assert windows == {(ns, a.isoformat(), b.isoformat()) for ns in ("team-a", "team-b", "__idle__")
                       for a, b in ((H0, H1), (H1, H2))}
    team_a = next(s for s in result.samples if s.entity == "team-a")
    assert team_a.labels["cluster"] == "gpu-cluster-1" and team_a.labels["kind"] == "namespace"
    assert team_a.source == "opencost" and team_a.ts in (H1, H2)


def test_idle_and_unallocated_are_kept_and_flagged(opencost: OpenCostFixture) -> None:
    opencost.serve_file("unallocated_1d.json")
    result = collect_one(collector(opencost.url, step="1d", lookback=1, now=datetime(2026, 3, 2, 9, 30, tzinfo=UTC)))
    assert opencost.requests[0][1]["step"] == "1d"
    assert opencost.requests[0][1]["window"] == "2026-03-01T00:00:00Z,2026-03-02T00:00:00Z"
    kinds = {s.entity: s.labels["kind"] for s in result.samples}
    assert kinds == {"team-a": "namespace", "__unallocated__": "unallocated", "__idle__": "idle"}
    idle_metrics = {s.metric for s in result.samples if s.entity == "__idle__"}
    assert "opencost_allocation_total_efficiency" not in idle_metrics  # null in OpenCost's answer
    assert "opencost_allocation_total_cost" in idle_metrics


def rows(engine: Engine) -> dict[tuple[str, datetime], OpenCostAllocation]:
    """Stored rows by (namespace, window start)."""
    with Session(engine) as session:
        return {(r.namespace, r.window_start): r for r in session.exec(select(OpenCostAllocation))}


def test_persist_is_exact_and_idempotent(opencost: OpenCostFixture, engine: Engine) -> None:
    opencost.serve_file("namespaces_1h.json")
    results = list(collector(opencost.url).collect())
    with Session(engine) as session:
        assert persist_opencost(session, results) == 6
        session.commit()
    with Session(engine) as session:
        assert persist_opencost(session, results) == 0  # the same results again change nothing
        session.commit()
    stored = rows(engine)
    assert len(stored) == 6
    team_b = stored[("team-b", H1)]
    assert team_b.window_end == H2
    assert (team_b.cpu_cost, team_b.gpu_cost, team_b.ram_cost, team_b.shared_cost, team_b.total_cost) == (
        Decimal("0.13396"), Decimal("2.95"), Decimal("0.11328"), Decimal("0.1"), Decimal("3.29724"))
    assert isinstance(team_b.total_cost, Decimal)
    assert team_b.total_efficiency == pytest.approx(0.27)
    assert stored[("__idle__", H0)].total_efficiency is None
    assert stored[("__idle__", H0)].gpu_hours == Decimal(2)
    assert stored[("team-a", H0)].ram_byte_hours == Decimal(137438953472)
    assert sum((r.total_cost for r in stored.values()), Decimal(0)) == Decimal("55.08784")
    for row in stored.values():  # OpenCost's total is the sum of its parts, to the last digit
        parts = row.cpu_cost + row.gpu_cost + row.ram_cost + row.pv_cost + row.network_cost + row.shared_cost
        assert parts == row.total_cost


def test_a_revised_window_updates_its_row_only(opencost: OpenCostFixture, engine: Engine) -> None:
    opencost.serve_file("namespaces_1h.json")
    with Session(engine) as session:
        persist_opencost(session, collector(opencost.url).collect())
        session.commit()
    opencost.serve_file("revised_1h.json")
    with Session(engine) as session:
        assert persist_opencost(session, collector(opencost.url).collect()) == 1
        session.commit()
    stored = rows(engine)
    assert len(stored) == 6
    assert stored[("team-b", H1)].total_cost == Decimal("3.29731")
    assert stored[("team-b", H1)].network_cost == Decimal("0.00007")
    assert stored[("team-b", H0)].total_cost == Decimal("6.4945")


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("serve, expected", [
    (lambda f: f.serve_body("Error computing allocation range: Prometheus is unreachable", status=500),
     "HTTP 500: Error computing allocation range: Prometheus is unreachable"),
    (lambda f: f.serve_file("malformed.json"), "malformed JSON"),
    (lambda f: f.serve_file("missing_field.json"), "allocation 'team-a' of step 1 lacks field 'gpuCost'"),
    (lambda f: f.serve_file("error_code.json"), "OpenCost reported an error (code 500): error computing allocation"),
    (lambda f: f.serve_body('{"code": 200, "data": {"team-a": {}}}', content_type="application/json"),
     "field 'data' is not a list"),
    (lambda f: f.serve_body('{"code": 200, "data": [{"team-a": {"name": "team-a", "window": {"start": "2026-03-01T00:00:00Z", '
                            '"end": "2026-03-01T01:00:00Z"}, "cpuCoreHours": "16"}}]}', content_type="application/json"),
     "field 'cpuCoreHours' is not a number: '16'"),
], ids=["http-500", "malformed-json", "missing-field", "code-500", "data-not-list", "string-number"])
def test_bad_answers_fail_readably(opencost: OpenCostFixture, engine: Engine, serve, expected: str) -> None:
    serve(opencost)
    results = list(collector(opencost.url).collect())
    assert len(results) == 1 and not results[0].ok and results[0].samples == []
    assert expected in results[0].error
    assert results[0].error.startswith(f"OpenCost at {opencost.url}: ")
    with Session(engine) as session:
        assert persist_opencost(session, results) == 0
        session.commit()
    assert rows(engine) == {}


def test_connection_refused_fails_readably() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = collect_one(collector(url))
    assert not result.ok and not result.timed_out
    assert result.error.startswith(f"cannot reach OpenCost at {url}: ")
    assert "refused" in result.error.lower()


def test_a_slow_opencost_times_out(opencost: OpenCostFixture) -> None:
    opencost.serve_file("namespaces_1h.json", delay=1.0)
    result = collect_one(collector(opencost.url, timeout=0.2))
    assert not result.ok and result.timed_out
    assert "did not answer in time" in result.error


def test_build_follows_the_setting(tmp_path) -> None:
    assert build(Settings(data_dir=tmp_path)) is None
    built = build(Settings(data_dir=tmp_path, opencost_url="http://opencost.opencost:9003/"))
    assert built is not None and built.name == "opencost" and built.target == "http://opencost.opencost:9003"
    built.close()


def test_the_worker_cycle_stores_allocations_not_health(opencost: OpenCostFixture, engine: Engine,
                                                        tmp_path) -> None:
    opencost.serve_file("namespaces_1h.json")
    settings = Settings(data_dir=tmp_path, opencost_url=opencost.url, secret_key="k" * 40)
    sources = build_sources(settings, engine, SecretBox("k" * 40))
    report = run_cycle(engine, sources["opencost"])
    sources["opencost"].close()
    assert [(r.target, r.ok) for r in report.results] == [(opencost.url, True)]
    assert len(rows(engine)) == 6
    with Session(engine) as session:
        assert session.exec(select(HealthSnapshot).where(HealthSnapshot.source == "opencost")).all() == []
        state = session.exec(select(CollectorTargetState).where(CollectorTargetState.collector == "opencost")).one()
    assert (state.target, state.up, state.last_error) == (opencost.url, True, None)
