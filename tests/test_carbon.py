"""Grid carbon intensity (import all or nothing, fetch in Electricity Maps' shape) and the
emissions of metered energy per tenant, hand-computed to the gram, with tenancy."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from collectors.models import NodeEnergyHour
from dashboards.cost_data import emissions_summary
from fleet.runtime import FleetRuntime
from fleet.tenancy_models import Vdc
from kiln.app import create_app
from kiln.auth import principal_for_user
from kiln.settings import Settings
from kiln.worker import jobs_for
from metering.budgets import CarbonContext
from metering.exports import export_focus
from metering.models import CarbonIntensity
from metering.usage import build_usage
from tests.api_base import assert_problem
from tests.cli_helpers import base_env
from tests.cli_helpers import run as kiln
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World
from tests.fleet_helpers import make_vdc
from tests.loopback import LoopbackServer, serving
from tests.metering_helpers import SYSTEM, at, card, lease, node, run

GOOD = """zone,hour,g_co2e_per_kwh
DE,2026-11-02T10:00Z,300.5
DE,2026-11-02T11:00:00+00:00,410.25
DE,2026-11-02T13:00+01:00,100
"""


def env_for(engine: Engine, tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False),
                    KILN_SECRET_KEY=TEST_SECRET_KEY, **extra)


def stored(engine: Engine) -> dict[tuple[str, str], Decimal]:
    with Session(engine) as session:
        return {(row.zone, f"{row.hour:%dT%H}"): row.g_co2e_per_kwh for row in session.exec(select(CarbonIntensity))}


def test_an_intensity_file_is_imported_whole_or_not_at_all(engine: Engine, world: World, tmp_path: Path) -> None:
    node(world, name="gpu-de-1", zone="DE")
    env = env_for(engine, tmp_path)
    good = tmp_path / "good.csv"
    good.write_text(GOOD)
    done = kiln(env, "carbon", "import", str(good))
    assert done.returncode == 0 and done.stdout.strip() == "imported 3 hourly intensity figure(s) for DE", done.stderr
    assert stored(engine) == {("DE", "02T10"): Decimal("300.5"), ("DE", "02T11"): Decimal("410.25"),
                              ("DE", "02T12"): Decimal("100")}  # 13:00+01:00 is 12:00 UTC
    bad = tmp_path / "bad.csv"
    bad.write_text("zone,hour,g_co2e_per_kwh\n"
                   "DE,2026-11-02T10:00Z,999\n"  # fine on its own: must not be stored either
                   "DE,2026-11-02T11:00Z,-4\n"
                   "XX,2026-11-02T11:00Z,200\n"
                   "DE,2026-11-02T12:30Z,200\n"
                   "DE,2026-11-02T13:00,200\n"
                   "DE,2026-11-02T15:00Z,200\n"
                   "DE,2026-11-02T15:00Z,201\n")
    refused = kiln(env, "carbon", "import", str(bad))
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
    message = refused.stderr
    for part in ("row 3: g_co2e_per_kwh '-4' must not be negative", "row 4: zone 'XX' is no node's zone (known: DE)",
                 "row 5: hour '2026-11-02T12:30Z' is not on the hour", "row 6: hour '2026-11-02T13:00' has no timezone",
                 "row 8: DE 2026-11-02T15:00Z is given twice", "DE has no figure for 2026-11-02T11:00Z to 2026-11-02T14:00Z"):
        assert part in message, (part, message)
    assert stored(engine)[("DE", "02T10")] == Decimal("300.5")  # unchanged
    header = tmp_path / "header.csv"
    header.write_text("zone;hour;value\n")
    assert "the first line must be the header zone,hour,g_co2e_per_kwh" in kiln(env, "carbon", "import", str(header)).stderr


class ElectricityMapsLike:
    """A fixture server answering `GET /v3/carbon-intensity/history?zone=Z` in the shape
    Electricity Maps documents (history of {zone, carbonIntensity, datetime, updatedAt,
    createdAt, emissionFactorType, isEstimated, estimationMethod})."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.status = 200
        self.server = LoopbackServer(self.answer)
        self.url = self.server.url

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        self.requests.append((path, headers.get("auth-token")))
        zone = path.split("zone=", 1)[-1]
        history = [{"zone": zone, "carbonIntensity": value, "datetime": f"2026-11-02T{hour:02d}:00:00.000Z",
                    "updatedAt": "2026-11-02T23:51:11.001Z", "createdAt": "2026-10-30T00:48:05.423Z",
                    "emissionFactorType": "lifecycle", "isEstimated": value is None, "estimationMethod": None}
                   for hour, value in ((10, 312), (11, None), (12, 288))]
        return self.status, "application/json", json.dumps({"zone": zone, "history": history}).encode()


@pytest.fixture
def electricity_maps() -> Iterator[ElectricityMapsLike]:
    source = ElectricityMapsLike()
    yield source
    source.server.close()


def test_fetch_reads_the_history_of_every_zone_nodes_use(engine: Engine, world: World, tmp_path: Path,
                                                        electricity_maps: ElectricityMapsLike) -> None:
    node(world, name="gpu-fr-1", zone="FR")
    env = env_for(engine, tmp_path, KILN_CARBON_URL=electricity_maps.url, KILN_CARBON_TOKEN="em-token",
                  KILN_CARBON_ZONE="DE")
    done = kiln(env, "carbon", "fetch")
    assert done.returncode == 0 and done.stdout.strip() == "DE: 2 hour(s), FR: 2 hour(s)", done.stderr
    assert sorted(electricity_maps.requests) == [("/v3/carbon-intensity/history?zone=DE", "em-token"),
                                                 ("/v3/carbon-intensity/history?zone=FR", "em-token")]
    assert stored(engine) == {(z, h): Decimal(v) for z in ("DE", "FR") for h, v in (("02T10", 312), ("02T12", 288))}
    electricity_maps.status = 503
    failed = kiln(env, "carbon", "fetch", "--zone", "DE")
    assert failed.returncode != 0 and "answered HTTP 503 for zone DE" in failed.stderr
    no_url = kiln(env_for(engine, tmp_path), "carbon", "fetch")
    assert no_url.returncode != 0 and "KILN_CARBON_URL is not set" in no_url.stderr


def test_emissions_per_tenant_to_the_gram_with_idle_energy_for_global_roles(engine: Engine, world: World,
                                                                            settings: Settings) -> None:
    client = TestClient(create_app(settings.model_copy(update={"embodied_emissions": "gpu.h100=1.25,gpu.a100=0.9"}),
                                   engine=engine))
    leased = node(world, name="gpu-de-1", zone="DE")
    spare = node(world, name="gpu-nozone")  # no zone and no KILN_CARBON_ZONE: kWh without intensity
    make_vdc(world, "train", ["gpu-de-1"], {"a": {}})
    held = lease(world, leased, "a", "2026-11-02T10:00", "2026-11-02T12:00")
    held.vdc_id = world.session.exec(select(Vdc.id).where(Vdc.name == "train")).one()
    world.session.add(held)
    world.session.commit()
    lease(world, spare, "b", "2026-11-02T10:00", "2026-11-02T11:00")
    for node_row, hour, kwh in ((leased, "10:00", "1.5"), (leased, "11:00", "2.25"), (leased, "12:00", "0.75"),
                                (spare, "10:00", "0.4")):
        world.session.add(NodeEnergyHour(node_id=node_row.id, hour=at(f"2026-11-02T{hour}"), kwh=Decimal(kwh),
                                         covered_seconds=3600))
    for hour, g in (("10:00", "300.5"), ("11:00", "410.25"), ("12:00", "100")):
        world.session.add(CarbonIntensity(zone="DE", hour=at(f"2026-11-02T{hour}"), g_co2e_per_kwh=Decimal(g)))
    world.session.commit()
    build_usage(world.session, at("2026-11-01T00:00"), at("2026-12-01T00:00"), now=at("2026-11-05T00:00"))
    world.session.commit()

    admin = client.get("/api/v1/usage/emissions", params={"period": "2026-11"}, headers=world.headers("finance")).json()
    # tenant-a: 1.5 kWh × 300.5 g + 2.25 kWh × 410.25 g = 1,373.8125 g → 1.374 kg (half-even, to the gram)
    assert _decimal_rows(admin["tenants"]) == [("tenant-a", Decimal("3.75"), Decimal("1.374"), Decimal(0)),
                                               ("tenant-b", Decimal("0.4"), Decimal(0), Decimal("0.4"))]
    # embodied: 2 and 1 leased gpu.h100 node-hours × 1.25 kg
    assert [Decimal(r["embodied_kg_co2e"]) for r in admin["tenants"]] == [Decimal("2.5"), Decimal("1.25")]
    # idle: gpu-de-1 12:00-13:00 was leased to nobody: 0.75 kWh × 100 g = 75 g
    assert (Decimal(admin["idle_kwh"]), Decimal(admin["idle_kg_co2e"]), Decimal(admin["idle_kwh_without_intensity"])) == (
        Decimal("0.75"), Decimal("0.075"), Decimal(0))
    # an emissions budget: 2 kg for tenant-a; 1.374 kg from energy + 2.5 kg embodied crosses 50 % and 100 %
    finance = world.headers("finance")
    for bad, field_message in (({"unit": "kg-co2e", "currency": "USD"}, "has no currency"),
                               ({"unit": "money"}, "needs its currency"), ({"unit": "kg-co2e", "vdc": "train"}, "tenant-wide")):
        refused = assert_problem(client.post("/api/v1/budgets", headers=finance, json={
            "tenant": "tenant-a", "name": "carbon", "amount": "2", "thresholds": [50, 100], **bad}), 422)
        assert field_message in refused["detail"]
    created = client.post("/api/v1/budgets", headers=finance, json={
        "tenant": "tenant-a", "name": "carbon", "amount": "2", "unit": "kg-co2e", "thresholds": [50, 100]})
    assert created.status_code == 201 and (created.json()["unit"], created.json()["currency"]) == ("kg-co2e", None)
    assert client.post("/api/v1/bills/run", headers=finance, json={"period": "2026-11"}).status_code == 200
    alerts = client.get("/api/v1/budgets/alerts", headers=finance).json()
    assert sorted((a["threshold"], Decimal(a["value"])) for a in alerts) == [(50, Decimal("3.874")), (100, Decimal("3.874"))]
    assert "budget 'carbon' (kg CO2e): 3.874 of 2 used in 2026-11" in alerts[0]["message"]
    by_node = client.get("/api/v1/usage/emissions", params={"period": "2026-11", "by": "node"}, headers=finance).json()
    assert [(r["tenant"], r["node"], Decimal(r["kg_co2e"]), Decimal(r["embodied_kg_co2e"])) for r in by_node["tenants"]] == [
        ("tenant-a", "gpu-de-1", Decimal("1.374"), Decimal("2.5")), ("tenant-b", "gpu-nozone", Decimal(0), Decimal("1.25"))]
    by_vdc = client.get("/api/v1/usage/emissions", params={"period": "2026-11", "by": "vdc"}, headers=finance).json()
    assert [(r["tenant"], r["vdc"], Decimal(r["kwh"])) for r in by_vdc["tenants"]] == [
        ("tenant-a", "train", Decimal("3.75")), ("tenant-b", None, Decimal("0.4"))]  # tenant-b leased outside any VDC
    assert_problem(client.get("/api/v1/usage/emissions", params={"period": "2026-11", "by": "rack"}, headers=finance), 422)
    mine = client.get("/api/v1/usage/emissions", params={"period": "2026-11"}, headers=world.headers("a_member")).json()
    assert [row["tenant"] for row in mine["tenants"]] == ["tenant-a"] and mine["idle_kwh"] is None
    assert_problem(client.get("/api/v1/usage/emissions", params={"period": "2026-13"}, headers=world.headers("admin")), 422)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(CarbonIntensity)).one() == 3


def _decimal_rows(rows: list[dict]) -> list[tuple]:
    return [(r["tenant"], Decimal(r["kwh"]), Decimal(r["kg_co2e"]), Decimal(r["kwh_without_intensity"])) for r in rows]


def test_focus_energy_rows_carry_their_kwh_and_emissions(engine: Engine, world: World, tmp_path: Path) -> None:
    leased = node(world, name="gpu-de-1", zone="DE")
    spare = node(world, name="gpu-nozone")
    lease(world, leased, "a", "2026-11-02T10:00", "2026-11-02T12:00")
    lease(world, spare, "b", "2026-11-02T10:00", "2026-11-02T11:00")
    for node_row, hour, kwh in ((leased, "10:00", "1.5"), (leased, "11:00", "2.25"), (spare, "10:00", "0.4")):
        world.session.add(NodeEnergyHour(node_id=node_row.id, hour=at(f"2026-11-02T{hour}"), kwh=Decimal(kwh),
                                         covered_seconds=3600))
    for hour, g in (("10:00", "300.5"), ("11:00", "410.25")):
        world.session.add(CarbonIntensity(zone="DE", hour=at(f"2026-11-02T{hour}"), g_co2e_per_kwh=Decimal(g)))
    world.session.commit()
    card(world, "kwh", "0.25", currency="USD")
    run(world, period="2026-11", now="2026-11-05T00:00")
    out = tmp_path / "focus.csv"
    export_focus(world.session, SYSTEM, "2026-11", "csv", out, "Kiln Test")
    rows = list(csv.DictReader(out.open()))
    energy = {(r["SubAccountId"], r["SkuId"]): (r["x_EnergyConsumedKwh"], r["x_CarbonEmissionsKgCO2e"])
              for r in rows if r["SkuId"] == "kwh"}
    assert energy == {("tenant-a", "kwh"): ("3.75", "1.374"),  # 1.5 × 300.5 g + 2.25 × 410.25 g
                      ("tenant-b", "kwh"): ("0.4", "")}  # no zone, no KILN_CARBON_ZONE: no figure, not zero
    assert all(r["x_EnergyConsumedKwh"] == r["x_CarbonEmissionsKgCO2e"] == "" for r in rows if r["SkuId"] != "kwh")


def test_the_costs_page_data_shows_energy_and_emissions_per_day_with_tenancy(world: World) -> None:
    leased = node(world, name="gpu-de-1", zone="DE")
    lease(world, leased, "a", "2026-11-02T22:00", "2026-11-03T01:00")
    for hour, kwh, g in (("2026-11-02T22:00", "2", "300"), ("2026-11-02T23:00", "2", "200"), ("2026-11-03T00:00", "1", "100"),
                         ("2026-11-03T01:00", "0.5", "100")):
        world.session.add(NodeEnergyHour(node_id=leased.id, hour=at(hour), kwh=Decimal(kwh), covered_seconds=3600))
        world.session.add(CarbonIntensity(zone="DE", hour=at(hour), g_co2e_per_kwh=Decimal(g)))
    world.session.commit()
    build_usage(world.session, at("2026-11-01T00:00"), at("2026-12-01T00:00"), now=at("2026-11-05T00:00"))
    world.session.commit()
    carbon = CarbonContext()
    member = principal_for_user(world.session, world.callers["a_member"].user)
    mine = emissions_summary(world.session, member, "2026-11", None, carbon)
    assert (mine["kwh"], mine["kg_co2e"], mine["idle_kwh"]) == (Decimal(5), Decimal("1.1"), None)
    assert mine["per_day"] == {"2026-11-02": (Decimal(4), Decimal("1.0")), "2026-11-03": (Decimal(1), Decimal("0.1"))}
    other = principal_for_user(world.session, world.callers["b_member"].user)
    assert emissions_summary(world.session, other, "2026-11", None, carbon)["per_day"] == {}
    finance = principal_for_user(world.session, world.callers["finance"].user)
    everyone = emissions_summary(world.session, finance, "2026-11", None, carbon)
    assert (everyone["idle_kwh"], everyone["idle_kg_co2e"]) == (Decimal("0.5"), Decimal("0.05"))


def test_the_worker_fetches_every_hour_when_a_source_is_set(engine: Engine, world: World, settings: Settings,
                                                            electricity_maps: ElectricityMapsLike) -> None:
    node(world, name="gpu-fr-1", zone="FR")
    assert "carbon-fetch" not in {job.name for job in jobs_for(settings, engine, FleetRuntime.build(settings, engine))}
    configured = settings.model_copy(update={"carbon_url": electricity_maps.url, "carbon_zone": "DE"})
    job = next(j for j in jobs_for(configured, engine, FleetRuntime.build(configured, engine)) if j.name == "carbon-fetch")
    assert job.seconds == 3600
    electricity_maps.status = 502  # a failing source: logged, nothing stored, no exception
    job.run()
    assert stored(engine) == {}
    electricity_maps.status = 200
    job.run()
    assert set(stored(engine)) == {(z, h) for z in ("DE", "FR") for h in ("02T10", "02T12")}


def test_a_past_range_is_read_from_electricity_maps_own_answer(engine: Engine, world: World, tmp_path: Path) -> None:
    """`kiln carbon fetch --since` against the past-range answer Electricity Maps wrote
    (tests/data/upstream/electricitymaps/, cited there), served verbatim."""
    node(world, name="gpu-dk-1", zone="DK-DK2")
    answer = (Path(__file__).parent / "data" / "upstream" / "electricitymaps" / "past-range-response.json").read_bytes()
    asked: list[str] = []

    def respond(path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        asked.append(path)
        return 200, "application/json", answer

    with serving(respond) as server:
        env = env_for(engine, tmp_path, KILN_CARBON_URL=server.url)
        done = kiln(env, "carbon", "fetch", "--since", "2024-03-18T00:00Z")
        bad = kiln(env, "carbon", "fetch", "--since", "2024-03-18T00:30Z")
    assert done.returncode == 0 and done.stdout.strip() == "DK-DK2: 2 hour(s)", done.stderr
    assert asked[0].startswith("/v3/carbon-intensity/past-range?zone=DK-DK2&start=2024-03-18T00%3A00%3A00Z&end=")
    with Session(engine) as session:
        rows = {(r.zone, f"{r.hour:%Y-%m-%dT%H}"): r.g_co2e_per_kwh for r in session.exec(select(CarbonIntensity))}
    assert rows == {("DK-DK2", "2024-03-18T02"): Decimal(161), ("DK-DK2", "2024-03-18T03"): Decimal(167)}
    assert bad.returncode != 0 and "is not on the hour" in bad.stderr and len(asked) == 1  # refused before asking
