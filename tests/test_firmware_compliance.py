"""Firmware baselines (import all or nothing, per resource class or GPU model) and compliance
(API, CSV, CLI, tenancy), on inventories the Redfish collector read from sushy-static serving
DMTF's public-rackmount1 mockup (tests/data/upstream/redfish/): BMC `1.45.455b66-rev4`, BIOS
`P79 v1.45`, simple storage `SS` `2.50`."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from collectors.store import persist_results
from fleet.firmware_compliance import compare_versions, node_baseline
from fleet.models import FirmwareBaseline
from tests.api_base import assert_problem
from tests.cli_helpers import base_env
from tests.cli_helpers import run as kiln
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World
from tests.fleet_helpers import lease_node, make_node_row
from tests.peer_fixtures import poll_mockup, redfish_mockup_url  # noqa: F401 (a fixture)

READ_AT = datetime(2026, 11, 3, 8, 15, tzinfo=UTC)
BASELINE = """resource_class,component,version
gpu.h100,bmc,1.45.455b66-rev4
gpu.h100,BIOS,P79 v1.46
gpu.h100,SS,2.60
gpu.h100,nic,28.39.1002
gpu:NVIDIA H100 80GB HBM3,SS,2.10
gpu:NVIDIA H100 80GB HBM3,gpu,96.00.89.00.01
"""


@pytest.mark.parametrize(("expected", "actual", "status"), [
    ("2.60", "2.50", "behind"), ("2.5", "2.50", "ahead"), ("1.2", "1.2.0", "ok"), ("v1.10", "1.9", "behind"),
    ("1.9", "1.10", "ahead"), ("P79 v1.45", "P79 v1.45", "ok"), ("P79 v1.46", "P79 v1.45", "different"),
    ("2.60", "2.60a", "different"), ("2.60", None, "unknown"), ("2.60", " ", "unknown"),
])
def test_versions_compare_numerically_when_dotted_else_by_text(expected: str, actual: str | None, status: str) -> None:
    # each dotted part is a number, not a decimal fraction: 2.50 is part 50, after 2.5
    assert compare_versions(expected, actual) == status


def test_the_resource_class_wins_over_a_gpu_model_baseline() -> None:
    baselines = {"gpu.h100": {"ss": "2.60"}, "gpu:A": {"ss": "1", "gpu": "9"}, "gpu:B": {"gpu": "8", "nic": "7"}}
    assert node_baseline("gpu.h100", ["B", "A"], baselines) == {
        "ss": ("2.60", "gpu.h100"), "gpu": ("9", "gpu:A"), "nic": ("7", "gpu:B")}
    assert node_baseline(None, [], baselines) == {}


@pytest.fixture
def fleet(world: World, engine: Engine, redfish_mockup_url: str) -> dict[str, int]:  # noqa: F811
    """fw-1 and fw-2 (gpu.h100, H100s) with the mockup's inventory; fw-3 (gpu.h100) never read;
    cpu-1 (no class, no GPU). fw-2 is leased to tenant a."""
    nodes = {name: make_node_row(world, gpus=gpus, name=name, resource_class=klass).id
             for name, gpus, klass in (("fw-1", 2, "gpu.h100"), ("fw-2", 1, "gpu.h100"), ("fw-3", 0, "gpu.h100"),
                                       ("cpu-1", 0, None))}
    with Session(engine) as session, session.begin():
        persist_results(session, "redfish", [poll_mockup(redfish_mockup_url, n, READ_AT) for n in ("fw-1", "fw-2")])
    lease_node(world, nodes["fw-2"], "a")
    return nodes


def env_for(engine: Engine, tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False),
                    KILN_SECRET_KEY=TEST_SECRET_KEY)


def stored(engine: Engine) -> set[tuple[str, str, str]]:
    with Session(engine) as session:
        return {(b.scope, b.component, b.version) for b in session.exec(select(FirmwareBaseline))}


def test_a_baseline_file_is_imported_whole_or_not_at_all(fleet, engine: Engine, tmp_path: Path) -> None:
    env = env_for(engine, tmp_path)
    good = tmp_path / "baseline.csv"
    good.write_text(BASELINE)
    done = kiln(env, "firmware", "baseline", "import", str(good))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("replaced the baseline of gpu.h100 (4 component(s)), "
                                   "gpu:NVIDIA H100 80GB HBM3 (2 component(s))")
    before = stored(engine)
    assert ("gpu.h100", "bios", "P79 v1.46") in before and ("gpu.h100", "SS", "2.60") in before  # kinds lower-cased
    bad = tmp_path / "bad.csv"
    bad.write_text("resource_class,component,version\n"
                   "gpu.h100,bmc,9.9\n"  # fine on its own: must not be stored either
                   "gpu.h10,bmc,1.0\n"
                   "gpu:Tesla K80,gpu,1.0\n"
                   "gpu.h100,other,1.0\n"
                   "gpu.h100,bad id!,1.0\n"
                   "gpu.h100,nic,\n"
                   "gpu.h100,BMC,9.8\n"
                   "gpu.h100,bmc\n")
    refused = kiln(env, "firmware", "baseline", "import", str(bad))
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
    for part in ("7 problem(s), nothing imported",
                 "row 3, column resource_class: 'gpu.h10' is no node's resource class (known: gpu.h100, "
                 "gpu:NVIDIA H100 80GB HBM3)",
                 "row 4, column resource_class: 'gpu:Tesla K80' is no node's GPU model",
                 "row 5, column component: other is not a single component",
                 "row 6, column component: 'bad id!' is neither bmc, bios, gpu, nic nor a Redfish Id",
                 "row 7, column version: empty",
                 "row 8, column component: gpu.h100 bmc is also given at row 2",
                 "row 9: expected 3 columns"):
        assert part in refused.stderr, (part, refused.stderr)
    assert stored(engine) == before
    listed = kiln(env, "firmware", "baseline", "list", "-o", "json")
    assert {(r["resource_class"], r["component"], r["version"]) for r in json.loads(listed.stdout)} == before
    # a later file replaces only the classes it names
    (tmp_path / "only-gpu.csv").write_text("resource_class,component,version\ngpu:NVIDIA H100 80GB HBM3,gpu,97.00\n")
    assert kiln(env, "firmware", "baseline", "import", str(tmp_path / "only-gpu.csv")).returncode == 0
    after = stored(engine)
    assert {b for b in after if b[0] == "gpu:NVIDIA H100 80GB HBM3"} == {("gpu:NVIDIA H100 80GB HBM3", "gpu", "97.00")}
    assert {b for b in after if b[0] == "gpu.h100"} == {b for b in before if b[0] == "gpu.h100"}


def put_baseline(client: TestClient, world: World, caller: str, text: str = BASELINE):
    return client.put("/api/v1/firmware/baselines", content=text, headers={**world.headers(caller), "Content-Type": "text/csv"})


def test_only_infra_admins_replace_baselines_and_global_roles_read_them(fleet, client: TestClient, world: World,
                                                                         engine: Engine) -> None:
    for caller in ("finance", "a_admin", "a_member"):
        assert_problem(put_baseline(client, world, caller), 403)
    assert stored(engine) == set()
    bad = put_baseline(client, world, "admin", "resource_class,component,version\ngpu.h100,bmc,\n")
    assert "row 2, column version: empty" in assert_problem(bad, 400)["detail"] and stored(engine) == set()
    done = put_baseline(client, world, "admin")
    assert done.status_code == 200, done.text
    assert done.json() == {"replaced": {"gpu.h100": 4, "gpu:NVIDIA H100 80GB HBM3": 2}}
    for caller in ("admin", "finance"):
        listed = client.get("/api/v1/firmware/baselines", headers=world.headers(caller))
        assert {(r["resource_class"], r["component"], r["version"]) for r in listed.json()} == stored(engine)
    assert_problem(client.get("/api/v1/firmware/baselines", headers=world.headers("b_admin")), 403)


def by_key(rows: list[dict]) -> dict[tuple[str, str, str | None], tuple]:
    return {(r["node"], r["component"], r["firmware_id"]): (r["expected"], r["actual"], r["status"]) for r in rows}


def test_compliance_says_which_nodes_are_behind_on_which_component(fleet, client: TestClient, world: World) -> None:
    assert put_baseline(client, world, "admin").status_code == 200
    answer = client.get("/api/v1/firmware/compliance", headers=world.headers("admin"))
    assert answer.status_code == 200, answer.text
    rows = by_key(answer.json())
    for node in ("fw-1", "fw-2"):
        assert rows[(node, "bmc", "BMC")] == ("1.45.455b66-rev4", "1.45.455b66-rev4", "ok")
        assert rows[(node, "bios", "BIOS")] == ("P79 v1.46", "P79 v1.45", "different")
        assert rows[(node, "SS", "SS")] == ("2.60", "2.50", "behind")  # the class's 2.60, not the GPU model's 2.10
        assert rows[(node, "nic", None)] == ("28.39.1002", None, "missing")  # read, but the mockup has no NIC
        assert rows[(node, "gpu", None)] == ("96.00.89.00.01", None, "missing")  # from the gpu:<model> baseline
    assert {k: v for k, v in rows.items() if k[0] == "fw-3"} == {  # never read; no GPU, so only its class
        ("fw-3", c, None): (v, None, "unknown") for c, v in (("bmc", "1.45.455b66-rev4"), ("bios", "P79 v1.46"),
                                                             ("SS", "2.60"), ("nic", "28.39.1002"))}
    assert not any(k[0] == "cpu-1" for k in rows)  # no baseline applies
    first = next(r for r in answer.json() if r["node"] == "fw-1")
    assert first["read_at"] == "2026-11-03T08:15:00Z" and first["resource_class"] == "gpu.h100"
    behind = client.get("/api/v1/firmware/compliance", params={"status": "behind"}, headers=world.headers("admin")).json()
    assert {(r["node"], r["firmware_id"]) for r in behind} == {("fw-1", "SS"), ("fw-2", "SS")}
    assert_problem(client.get("/api/v1/firmware/compliance", params={"status": "late"}, headers=world.headers("admin")), 422)
    as_csv = client.get("/api/v1/firmware/compliance", params={"format": "csv", "status": "behind"},
                        headers=world.headers("finance"))
    assert as_csv.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [(r["node"], r["firmware_id"], r["expected"], r["actual"], r["status"]) for r in parsed] == [
        ("fw-1", "SS", "2.60", "2.50", "behind"), ("fw-2", "SS", "2.60", "2.50", "behind")]


def test_tenants_see_compliance_of_their_leased_nodes_only(fleet, client: TestClient, world: World) -> None:
    assert put_baseline(client, world, "admin").status_code == 200
    for caller in ("a_admin", "a_member"):
        rows = client.get("/api/v1/firmware/compliance", headers=world.headers(caller)).json()
        assert rows and {r["node"] for r in rows} == {"fw-2"}
    for caller in ("b_admin", "b_member"):
        assert client.get("/api/v1/firmware/compliance", headers=world.headers(caller)).json() == []
        named = client.get("/api/v1/firmware/compliance", params={"node": "fw-2", "format": "csv"},
                           headers=world.headers(caller))
        assert named.text.strip().splitlines() == ["node,resource_class,baseline,component,firmware_id,expected,actual,"
                                                   "status,read_at"]


def test_the_cli_prints_compliance_as_a_table_json_or_csv(fleet, client: TestClient, world: World, engine: Engine,
                                                          tmp_path: Path) -> None:
    assert put_baseline(client, world, "admin").status_code == 200
    env = env_for(engine, tmp_path)
    behind = kiln(env, "firmware", "compliance", "--behind", "-o", "json")
    assert behind.returncode == 0, behind.stderr
    assert {(r["node"], r["firmware_id"], r["status"]) for r in json.loads(behind.stdout)} == {
        ("fw-1", "SS", "behind"), ("fw-2", "SS", "behind")}
    table = kiln(env, "firmware", "compliance", "--node", "fw-1")
    assert "Firmware compliance" in table.stdout and "different" in table.stdout and "fw-2" not in table.stdout
    as_csv = kiln(env, "firmware", "compliance", "--status", "missing", "-o", "csv")
    assert {(r["node"], r["component"]) for r in csv.DictReader(io.StringIO(as_csv.stdout))} == {
        ("fw-1", "nic"), ("fw-1", "gpu"), ("fw-2", "nic"), ("fw-2", "gpu")}
    wrong = kiln(env, "firmware", "compliance", "--status", "late")
    assert wrong.returncode != 0 and wrong.stderr.startswith("kiln: error: status: unknown status late")
