"""Metering over HTTP: price cards, discounts and budgets (generic API tests), bills, drill-down and exports."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from fastapi.testclient import TestClient

from kiln.db import utcnow
from metering.periods import period_of
from tests.api_base import ResourceAPITests, assert_problem
from tests.factories import World
from tests.metering_helpers import GPU_SKU, NODE_SKU, card, lease, node

D = Decimal
CARDS = "/api/v1/price-cards"


class TestDiscountsAPI(ResourceAPITests):
    path = "/api/v1/discounts"
    update_payload = {"percent": "20", "note": "renegotiated"}
    invalid_payloads = [
        ({"percent": "-1"}, "percent"), ({"percent": "101"}, "percent"), ({"percent": "ten"}, "percent"),
        ({"percent": "1.1234567"}, "percent"), ({"tenant": "Not A Slug"}, "tenant"),
    ]

    def create_payload(self, world: World, tenant: str) -> dict:
        return {"tenant": world.tenant(tenant).slug, "percent": "12.5", "note": "contract 2026"}


class TestBudgetsAPI(ResourceAPITests):
    path = "/api/v1/budgets"
    update_payload = {"amount": "2500.5", "thresholds": [90, 100]}
    invalid_payloads = [
        ({"amount": "0"}, "amount"), ({"amount": "lots"}, "amount"), ({"currency": "ZZZ"}, "currency"),
        ({"thresholds": []}, "thresholds"), ({"thresholds": [50, 50]}, "thresholds"), ({"name": ""}, "name"),
    ]

    def create_payload(self, world: World, tenant: str) -> dict:
        return {"tenant": world.tenant(tenant).slug, "name": "monthly", "amount": "1000", "currency": "EUR",
                "thresholds": [50, 80, 100]}


def _card(sku: str = NODE_SKU, price: str = "1.50", start: str = "2026-01-01T00:00:00Z", end: str | None = None, **extra) -> dict:
    return {"sku": sku, "unit_price": price, "currency": "EUR", "effective_from": start, "effective_to": end, **extra}


def test_price_cards_are_read_by_everyone_and_written_by_finance(client: TestClient, world: World) -> None:
    created = client.post(CARDS, json=_card(), headers=world.headers("finance"))
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["sku"], body["unit"], D(body["unit_price"]), body["currency"]) == (NODE_SKU, "Hours", D("1.5"), "EUR")
    for reader in ("a_member", "b_admin", "admin"):
        assert [c["id"] for c in client.get(CARDS, headers=world.headers(reader)).json()] == [body["id"]]
    assert_problem(client.post(CARDS, json=_card(start="2027-01-01T00:00:00Z"), headers=world.headers("a_admin")), 403)
    ended = client.patch(f"{CARDS}/{body['id']}", json={"effective_to": "2026-11-01T00:00:00Z"}, headers=world.headers("admin"))
    assert ended.status_code == 200 and ended.json()["effective_to"] == "2026-11-01T00:00:00Z"
    follow = client.post(CARDS, json=_card(price="1.75", start="2026-11-01T00:00:00Z"), headers=world.headers("admin"))
    assert follow.status_code == 201, follow.text


def test_bad_price_cards_are_refused_and_nothing_is_stored(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    first = client.post(CARDS, json=_card(), headers=admin).json()
    clash = assert_problem(client.post(CARDS, json=_card(price="2", start="2026-06-01T00:00:00Z"), headers=admin), 409)
    assert f"overlaps price card {first['id']}" in clash["detail"] and NODE_SKU in clash["detail"]
    for overrides, field in [({"unit_price": "-1"}, "unit_price"), ({"unit_price": "abc"}, "unit_price"),
                             ({"currency": "EUX"}, "currency"), ({"sku": "banana-hour"}, "sku"),
                             ({"unit": "Hours"}, "body"), ({"effective_from": "2026-01-01T00:00:00"}, "effective_from")]:
        body = assert_problem(client.post(CARDS, json={**_card(sku=GPU_SKU), **overrides}, headers=admin), 422)
        assert field in [e["field"] for e in body["errors"]], (overrides, body)
    other_currency = assert_problem(client.post(CARDS, json=_card(sku=GPU_SKU, currency="USD"), headers=admin), 409)
    assert "one currency" in other_currency["detail"]
    assert [c["id"] for c in client.get(CARDS, headers=admin).json()] == [first["id"]]


def test_price_card_csv_import_is_all_or_nothing_with_row_numbers(client: TestClient, world: World) -> None:
    admin = {**world.headers("admin"), "Content-Type": "text/csv"}
    bad = (
        "sku,unit,unit_price,currency,effective_from,effective_to\n"
        f"{NODE_SKU},Hours,1.50,EUR,2026-01-01,\n"
        f"{GPU_SKU},GPU-Hours,-2,EUR,2026-01-01,\n"
        "kwh,kWh,cheap,EUR,2026-01-01,\n"
        "cpu-core-hour,Core-Hours,0.02,XYZ,2026-01-01,\n"
        f"{NODE_SKU},Hours,1.60,EUR,2026-06-01,\n"
    )
    body = assert_problem(client.post(f"{CARDS}/import", content=bad, headers=admin), 422)
    assert [e["field"] for e in body["errors"]] == ["row 3", "row 4", "row 5", "row 6"]
    assert "must not be negative" in body["errors"][0]["message"]
    assert "not a number" in body["errors"][1]["message"]
    assert "unknown currency" in body["errors"][2]["message"]
    assert "overlaps another row" in body["errors"][3]["message"]
    assert client.get(CARDS, headers=admin).json() == []
    good = f"sku,unit,unit_price,currency,effective_from\n{NODE_SKU},Hours,1.50,EUR,2026-01-01\nkwh,kWh,0.21,EUR,2026-01-01T00:00:00Z\n"
    created = client.post(f"{CARDS}/import", content=good, headers=admin)
    assert created.status_code == 201, created.text
    assert sorted(c["sku"] for c in created.json()) == ["kwh", NODE_SKU]
    again = assert_problem(client.post(f"{CARDS}/import", content=good, headers=admin), 422)
    assert again["errors"][0]["field"] == "row 2" and "overlaps price card" in again["errors"][0]["message"]


def _october(world: World) -> None:
    lease(world, node(world, gpus=2), "a", "2026-10-01T00:00", "2026-10-02T00:00")
    lease(world, node(world, gpus=1), "b", "2026-10-05T12:30", "2026-10-05T14:00")
    card(world, NODE_SKU, "1.00")
    card(world, GPU_SKU, "2.00")


def test_bills_run_list_drill_down_and_tenant_isolation(client: TestClient, world: World) -> None:
    _october(world)
    assert_problem(client.post("/api/v1/bills/run", json={"period": "2026-10"}, headers=world.headers("a_admin")), 403)
    run = client.post("/api/v1/bills/run", json={"period": "2026-10"}, headers=world.headers("finance"))
    assert run.status_code == 200, run.text
    assert run.json()["usage_rows"]["lease"] == 24 * 2 + 2 * 2  # A: 24 h × (node, GPU); B: 2 hours touched × 2
    totals = {b["tenant"]: (D(b["total"]), b["status"]) for b in client.get("/api/v1/bills?period=2026-10", headers=world.headers("finance")).json()}
    assert totals == {"tenant-a": (D("120.00"), "draft"), "tenant-b": (D("4.50"), "draft")}  # 24×(1+2×2); 1.5×(1+2)
    mine = client.get("/api/v1/bills", headers=world.headers("a_member")).json()
    assert [b["tenant"] for b in mine] == ["tenant-a"]
    b_bill = client.get("/api/v1/bills?tenant=tenant-b", headers=world.headers("admin")).json()[0]
    assert_problem(client.get(f"/api/v1/bills/{b_bill['id']}", headers=world.headers("a_member")), 404)
    detail = client.get(f"/api/v1/bills/{mine[0]['id']}", headers=world.headers("a_member")).json()
    gpu_line = next(l for l in detail["lines"] if l["sku"] == GPU_SKU)
    assert sum(D(l["contracted_cost"]) for l in detail["lines"]) == D(detail["total"])
    usage = client.get(f"/api/v1/bills/{mine[0]['id']}/lines/{gpu_line['id']}/usage", headers=world.headers("a_member")).json()
    assert len(usage) == 24 and sum(D(u["quantity"]) for u in usage) == D(gpu_line["quantity"]) == D(48)
    assert {u["tenant"] for u in usage} == {"tenant-a"} and usage[0]["hour"] == "2026-10-01T00:00:00Z"
    assert_problem(client.get(f"/api/v1/bills/{b_bill['id']}/lines/{gpu_line['id']}/usage", headers=world.headers("admin")), 404)
    rows = client.get("/api/v1/usage?period=2026-10", headers=world.headers("b_member")).json()
    assert {r["tenant"] for r in rows} == {"tenant-b"} and sum(D(r["quantity"]) for r in rows if r["sku"] == NODE_SKU) == D("1.5")
    assert_problem(client.get("/api/v1/bills/idle?period=2026-10", headers=world.headers("a_admin")), 403)
    idle = client.get("/api/v1/bills/idle?period=2026-10", headers=world.headers("finance")).json()
    assert {i["sku"] for i in idle} == {NODE_SKU, GPU_SKU}


def test_finalise_twice_and_bad_periods_are_clear_errors(client: TestClient, world: World) -> None:
    _october(world)
    finance = world.headers("finance")
    done = client.post("/api/v1/bills/finalize", json={"period": "2026-10", "tenant": "tenant-a"}, headers=finance)
    assert done.status_code == 200 and [(b["tenant"], b["status"]) for b in done.json()] == [("tenant-a", "finalised")]
    again = assert_problem(client.post("/api/v1/bills/finalize", json={"period": "2026-10", "tenant": "tenant-a"}, headers=finance), 409)
    assert "already finalised" in again["detail"]
    assert_problem(client.post("/api/v1/bills/finalize", json={"period": period_of(utcnow())}, headers=finance), 409)
    future = assert_problem(client.post("/api/v1/bills/run", json={"period": "2999-01"}, headers=finance), 422)
    assert future["errors"][0]["field"] == "period" and "future" in future["detail"]
    assert_problem(client.post("/api/v1/bills/run", json={"period": "October"}, headers=finance), 422)
    bills = client.get("/api/v1/bills?period=2026-10", headers=finance).json()
    assert sorted((b["tenant"], b["status"]) for b in bills) == [("tenant-a", "finalised"), ("tenant-b", "draft")]
    assert_problem(client.get("/api/v1/exports/focus?period=2026-05", headers=finance), 404)
    assert_problem(client.get("/api/v1/exports/focus?period=2999-05", headers=finance), 422)
    assert_problem(client.get("/api/v1/exports/focus?period=2026-10&format=xlsx", headers=finance), 422)


def test_focus_and_chargeback_exports_follow_the_callers_scope(client: TestClient, world: World) -> None:
    _october(world)
    client.post("/api/v1/bills/run", json={"period": "2026-10"}, headers=world.headers("admin"))
    response = client.get("/api/v1/exports/focus?period=2026-10&format=csv", headers=world.headers("finance"))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["SubAccountId"] for r in rows} == {"tenant-a", "tenant-b"}
    assert sum(D(r["BilledCost"]) for r in rows) == D("124.50")
    gpu = next(r for r in rows if r["SubAccountId"] == "tenant-a" and r["SkuId"] == GPU_SKU)
    assert (gpu["BillingAccountName"], gpu["ServiceCategory"], gpu["ChargeCategory"], gpu["ChargeClass"]) == ("Kiln", "Compute", "Usage", "")
    # ListCost is the exact product (FOCUS), BilledCost the line's cents
    assert (gpu["PricingQuantity"], gpu["ListUnitPrice"], gpu["ListCost"], gpu["BilledCost"]) == ("48.0", "2.0", "96.0", "96.00")
    assert gpu["ChargePeriodStart"] == "2026-10-01T00:00:00Z" and gpu["BillingPeriodEnd"] == "2026-11-01T00:00:00Z"
    own = list(csv.DictReader(io.StringIO(client.get("/api/v1/exports/focus?period=2026-10", headers=world.headers("b_member")).text)))
    assert {r["SubAccountId"] for r in own} == {"tenant-b"}
    parquet = client.get("/api/v1/exports/focus?period=2026-10&format=parquet", headers=world.headers("finance"))
    assert parquet.status_code == 200 and parquet.content[:4] == b"PAR1"
    chargeback = client.get("/api/v1/exports/chargeback?period=2026-10", headers=world.headers("finance"))
    assert chargeback.status_code == 200
    total = [r for r in csv.DictReader(io.StringIO(chargeback.text)) if r["line_type"] == "total"]
    assert [D(r["billed_cost"]) for r in total] == [D("124.50")]
