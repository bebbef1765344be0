"""Budget and GPU-hours quota alerts: raised once per threshold and period, POSTed to a real HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from fleet.tenancy_models import Lease, Vdc
from metering.budgets import BudgetCreate, check_alerts, create_budget, deliver_alerts
from metering.models import BudgetAlert
from tests.factories import World
from tests.fleet_helpers import make_vdc
from tests.metering_helpers import GPU_SKU, NODE_SKU, SYSTEM, at, card, node, run


class Webhook:
    """A loopback HTTP server that records JSON bodies; it answers `status` (500 to simulate an outage)."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.status < 300:
                    hook.received.append(json.loads(body))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts?token=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A running webhook receiver on loopback."""
    hook = Webhook()
    hook.thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def _lease(world: World, node_id: int, vdc_id: int, start: str, end: str) -> None:
    world.session.add(Lease(tenant_id=world.a.id, node_id=node_id, vdc_id=vdc_id, starts_at=at(start), ends_at=at(end), created_by="test"))
    world.session.commit()


def _check(world: World, url: str | None) -> tuple[list[BudgetAlert], int]:
    raised = check_alerts(world.session, SYSTEM, "2026-10", now=at("2026-11-05T00:00"))
    sent = deliver_alerts(world.session, url, 5)
    world.session.commit()
    return raised, sent


def test_thresholds_alert_once_and_undelivered_alerts_are_retried(world: World, webhook: Webhook) -> None:
    n1 = node(world, gpus=1)
    make_vdc(world, "train", [n1.name], {"a": {"max_gpu_hours": 12}}, max_gpu_hours=100)
    vdc_id = world.session.exec(select(Vdc.id).where(Vdc.name == "train")).one()
    card(world, NODE_SKU, "1.00")
    card(world, GPU_SKU, "2.00")
    create_budget(world.session, SYSTEM, BudgetCreate(tenant="tenant-a", name="october", amount="50", currency="EUR"))
    create_budget(world.session, SYSTEM, BudgetCreate(tenant="tenant-a", vdc="train", name="train only", amount="200",
                                                      currency="EUR", thresholds=[20]))
    world.session.commit()
    _lease(world, n1.id, vdc_id, "2026-10-01T00:00", "2026-10-01T15:00")  # 15 h × 3.00 = 45.00; 15 GPU-hours
    run(world)
    webhook.status = 500
    raised, sent = _check(world, webhook.url)
    # budget 45/50 = 90 % → 50 and 80; VDC budget 45/200 = 22.5 % → 20; tenant quota 15/12 GPU-hours → 80 and 100; VDC 15 %
    assert sorted((a.subject.split(":")[0], a.threshold) for a in raised) == [
        ("budget", 20), ("budget", 50), ("budget", 80), ("quota", 80), ("quota", 100)]
    assert sent == 0 and webhook.received == []
    stored = world.session.exec(select(BudgetAlert)).all()
    assert {(a.attempts, a.last_error) for a in stored} == {(1, "webhook answered HTTP 500")}
    webhook.status = 200
    raised, sent = _check(world, webhook.url)
    assert (raised, sent) == ([], 5)
    quota = next(p for p in webhook.received if p["kind"] == "gpu-hours" and p["threshold_percent"] == 100)
    assert (quota["tenant"], quota["vdc"], quota["value"], quota["limit"], quota["period"]) == ("tenant-a", "train", "15", "12", "2026-10")
    budget = next(p for p in webhook.received if p["kind"] == "budget" and p["threshold_percent"] == 80)
    assert (budget["value"], budget["limit"]) == ("45", "50") and "october" in budget["message"]
    assert _check(world, webhook.url) == ([], 0) and len(webhook.received) == 5  # each alert delivered exactly once
    _lease(world, n1.id, vdc_id, "2026-10-03T00:00", "2026-10-03T02:00")  # +6.00 → 51.00: the 100 % threshold
    run(world)
    raised, sent = _check(world, webhook.url)
    october = next(a.subject for a in stored if a.subject.startswith("budget:") and a.threshold == 80)
    assert [(a.subject, a.threshold) for a in raised] == [(october, 100)] and sent == 1
    assert len(webhook.received) == 6


def test_a_forecast_crossing_a_threshold_alerts_once_before_the_spend_does(world: World, webhook: Webhook) -> None:
    n1 = node(world, gpus=1)
    card(world, NODE_SKU, "1.00")
    card(world, GPU_SKU, "2.00")
    create_budget(world.session, SYSTEM, BudgetCreate(tenant="tenant-a", name="october", amount="1000", currency="EUR"))
    world.session.add(Lease(tenant_id=world.a.id, node_id=n1.id, starts_at=at("2026-10-01T00:00"), created_by="test"))
    world.session.commit()
    run(world, now="2026-10-11T00:00")  # 240 h × 3.00 = 720.00 (72 %); at that rate 2,232.00 by Oct 31 (223.2 %)

    def check(now: str) -> list[tuple[str, int]]:
        raised = check_alerts(world.session, SYSTEM, "2026-10", now=at(now))
        deliver_alerts(world.session, webhook.url, 5)
        world.session.commit()
        return sorted((a.kind, a.threshold) for a in raised)

    assert check("2026-10-11T00:00") == [("budget", 50), ("budget-forecast", 80), ("budget-forecast", 100)]
    forecast = next(p for p in webhook.received if p["kind"] == "budget-forecast" and p["threshold_percent"] == 100)
    assert (forecast["value"], forecast["limit"]) == ("2232", "1000")
    assert "2232 of 1000 forecast by the end of 2026-10 (223.2 %, threshold 100 %)" in forecast["message"]
    assert check("2026-10-12T00:00") == []  # once per period and threshold: reloads and re-checks raise nothing
    run(world, now="2026-10-21T00:00")  # 1,440.00 spent: the spend alerts follow; no forecast alert again
    assert check("2026-10-21T00:00") == [("budget", 80), ("budget", 100)]
    assert len(webhook.received) == 5


def test_a_quota_of_zero_gpu_hours_is_crossed_by_any_use(world: World) -> None:
    n1, n2 = node(world, gpus=1), node(world, gpus=1)
    make_vdc(world, "none", [n1.name], {"a": {}}, max_gpu_hours=0)
    make_vdc(world, "unused", [n2.name], {}, max_gpu_hours=0)
    vdc_id = world.session.exec(select(Vdc.id).where(Vdc.name == "none")).one()
    card(world, GPU_SKU, "2.00")
    _lease(world, n1.id, vdc_id, "2026-10-01T00:00", "2026-10-01T01:00")
    run(world)
    raised, _ = _check(world, None)
    assert sorted(a.threshold for a in raised) == [80, 100]  # only the VDC that used a GPU-hour
    assert {a.vdc_id for a in raised} == {vdc_id}
    assert "1 of 0 used in 2026-10 (over a limit of 0, threshold 100 %)" in next(a.message for a in raised if a.threshold == 100)


def test_unreachable_webhook_is_recorded_without_the_url(world: World) -> None:
    n1 = node(world, gpus=0)
    world.session.add(Lease(tenant_id=world.a.id, node_id=n1.id, starts_at=at("2026-10-01T00:00"), ends_at=at("2026-10-02T00:00"),
                            created_by="test"))
    card(world, NODE_SKU, "10.00")
    create_budget(world.session, SYSTEM, BudgetCreate(tenant="tenant-a", name="small", amount="1", currency="EUR", thresholds=[100]))
    world.session.commit()
    run(world)
    raised, sent = _check(world, "http://127.0.0.1:9/hook?token=s3cret")  # discard port: nothing listens
    assert len(raised) == 1 and sent == 0
    assert raised[0].last_error == "webhook unreachable: ConnectError" and "s3cret" not in raised[0].last_error


def test_alerts_are_visible_to_their_tenant_only(client: TestClient, world: World) -> None:
    n1 = node(world, gpus=0)
    world.session.add(Lease(tenant_id=world.a.id, node_id=n1.id, starts_at=at("2026-10-01T00:00"), ends_at=at("2026-10-02T00:00"),
                            created_by="test"))
    card(world, NODE_SKU, "10.00")
    create_budget(world.session, SYSTEM, BudgetCreate(tenant="tenant-a", name="small", amount="100", currency="EUR"))
    world.session.commit()
    assert client.post("/api/v1/bills/run", json={"period": "2026-10"}, headers=world.headers("finance")).status_code == 200
    mine = client.get("/api/v1/budgets/alerts?period=2026-10", headers=world.headers("a_member")).json()
    assert sorted(a["threshold"] for a in mine) == [50, 80, 100] and {a["tenant"] for a in mine} == {"tenant-a"}
    assert Decimal(mine[0]["value"]) == Decimal("240")
    assert client.get("/api/v1/budgets/alerts", headers=world.headers("b_member")).json() == []


def test_tenant_admins_set_budgets_for_their_own_tenant_only(client: TestClient, world: World) -> None:
    payload = {"name": "team", "amount": "500", "currency": "EUR"}
    own = client.post("/api/v1/budgets", json={**payload, "tenant": "tenant-a"}, headers=world.headers("a_admin"))
    assert own.status_code == 201 and own.json()["thresholds"] == [50, 80, 100]
    other = client.post("/api/v1/budgets", json={**payload, "tenant": "tenant-b"}, headers=world.headers("a_admin"))
    assert other.status_code == 404
    no_vdc = client.post("/api/v1/budgets", json={**payload, "tenant": "tenant-a", "vdc": "nope"}, headers=world.headers("admin"))
    assert no_vdc.status_code == 404 and "not granted" in no_vdc.json()["detail"]
    assert [b["tenant"] for b in client.get("/api/v1/budgets", headers=world.headers("finance")).json()] == ["tenant-a"]


def test_metrics_export_the_running_periods_budget_use(client: TestClient, world: World) -> None:
    from datetime import timedelta

    from kiln.db import utcnow
    from metering.periods import period_bounds, period_of

    start = max(utcnow() - timedelta(hours=2), period_bounds(period_of(utcnow()))[0])
    world.session.add(Lease(tenant_id=world.a.id, node_id=node(world, gpus=0).id, starts_at=start,
                            ends_at=start + timedelta(hours=1), created_by="test"))
    card(world, NODE_SKU, "40.00")
    create_budget(world.session, SYSTEM, BudgetCreate(tenant="tenant-a", name="monthly", amount="80", currency="EUR"))
    world.session.commit()
    assert client.post("/api/v1/bills/run", json={"period": period_of(utcnow())}, headers=world.headers("admin")).status_code == 200
    lines = [l for l in client.get("/metrics").text.splitlines() if l.startswith("kiln_budget_used_ratio{")]
    assert lines == ['kiln_budget_used_ratio{budget="monthly",tenant="tenant-a"} 0.5']  # 1 h × 40.00 of 80
