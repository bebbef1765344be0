"""GPU instance leases (`/api/v1/gpu-instance-leases`, `kiln leases create --gpu --profile`): MIG
instances that fit their GPU's compute slices, never beside a whole-node lease, within quotas
counted in compute fractions, one winner under concurrency; on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, select

from fleet.models import Gpu
from fleet.tenancy_models import GpuInstanceLease, Lease
from fleet.usage import period_of
from kiln.db import utcnow
from kiln.roles import Role
from tests.api_base import ResourceAPITests, assert_problem
from tests.cli_helpers import base_env, run
from tests.factories import World
from tests.fleet_helpers import make_node_row, make_vdc

PATH = "/api/v1/gpu-instance-leases"
_names = itertools.count(1)


class TestGpuInstanceLeasesAPI(ResourceAPITests):
    path = PATH
    supports_delete = False
    update_payload = {"ends_at": "2099-01-01T00:00:00Z", "note": "ended"}
    invalid_payloads = [
        ({"node": "Not A Node"}, "node"),
        ({"gpu_index": -1}, "gpu_index"),
        ({"profile": "3g"}, "profile"),
        ({"profile": "8g.80gb"}, "profile"),
        ({"starts_at": "2026-01-01T00:00:00"}, "starts_at"),
    ]

    def create_payload(self, world: World, tenant: str) -> dict:
        node = make_node_row(world, gpus=2)
        make_vdc(world, f"mig-vdc-{next(_names)}", [node.name], {tenant: {}})
        return {"node": node.name, "tenant": world.tenant(tenant).slug, "gpu_index": 1, "profile": "3g.40gb",
                "note": "inference"}


def _shared_node(world: World, gpus: int = 2, **grants: dict) -> str:
    node = make_node_row(world, gpus=gpus)
    make_vdc(world, f"vdc-{node.name}", [node.name], grants or {"a": {}, "b": {}})
    return node.name


def _instance(client: TestClient, world: World, node: str, tenant: str, profile: str, gpu: int = 0, **fields):
    payload = {"node": node, "tenant": f"tenant-{tenant}", "gpu_index": gpu, "profile": profile, **fields}
    return client.post(PATH, json=payload, headers=world.headers("admin"))


def test_instances_fit_their_gpus_compute_slices(client: TestClient, world: World, engine) -> None:
    node = _shared_node(world)
    for tenant, profile in (("a", "3g.40gb"), ("b", "3g.40gb"), ("a", "1g.10gb")):
        created = _instance(client, world, node, tenant, profile)
        assert created.status_code == 201, created.text  # 3g + 3g + 1g = the H100's 7 slices
    assert created.json()["compute_fraction"] == "1/7" and created.json()["gpu_model"] == "NVIDIA H100 80GB HBM3"
    full = assert_problem(_instance(client, world, node, "a", "1g.10gb"), 409)
    assert full["detail"].startswith(f"GPU 0 of node '{node}' has 7 compute slices and a 1g.10gb instance (1) does not fit beside ")
    assert full["detail"].count("instance lease") == 3
    assert _instance(client, world, node, "b", "4g.40gb", gpu=1).status_code == 201  # GPU 1 is another GPU
    body = assert_problem(_instance(client, world, node, "a", "4g.40gb", gpu=1), 409)
    assert "does not fit beside an instance lease of tenant 'tenant-b'" not in body["detail"]  # admin sees slugs
    assert "(4g.40gb, tenant 'tenant-b', from " in body["detail"]
    with Session(engine) as session:
        assert len(session.exec(select(GpuInstanceLease)).all()) == 4


def test_instances_fit_at_every_instant_not_just_in_total(client: TestClient, world: World) -> None:
    node = _shared_node(world, gpus=1)
    t0 = utcnow().replace(microsecond=0) + timedelta(days=1)
    at = lambda hours: (t0 + timedelta(hours=hours)).isoformat()  # noqa: E731
    assert _instance(client, world, node, "a", "4g.40gb", starts_at=at(0), ends_at=at(1)).status_code == 201
    assert _instance(client, world, node, "b", "4g.40gb", starts_at=at(1), ends_at=at(2)).status_code == 201
    late = assert_problem(_instance(client, world, node, "a", "4g.40gb", starts_at=at(1.5)), 409)
    assert "tenant 'tenant-b'" in late["detail"] and "tenant 'tenant-a'" not in late["detail"], "only the lease it collides with"
    assert _instance(client, world, node, "a", "3g.40gb", starts_at=at(0)).status_code == 201  # 4 + 3 and 3 + 4 fit


def test_a_tenant_admin_is_not_told_whose_instances_collide(client: TestClient, world: World) -> None:
    node = _shared_node(world, gpus=1)
    assert _instance(client, world, node, "b", "7g.80gb").status_code == 201
    payload = {"node": node, "tenant": "tenant-a", "gpu_index": 0, "profile": "1g.10gb"}
    body = assert_problem(client.post(PATH, json=payload, headers=world.headers("a_admin")), 409)
    assert "an instance lease of another tenant (7g.80gb, from " in body["detail"] and "tenant-b" not in body["detail"]
    whole = client.post("/api/v1/leases", json={"node": node, "tenant": "tenant-a"}, headers=world.headers("a_admin"))
    body = assert_problem(whole, 409)
    assert "has a GPU instance leased to another tenant from " in body["detail"] and "tenant-b" not in body["detail"]


def test_gpu_and_profile_are_checked_against_the_node(client: TestClient, world: World) -> None:
    node = _shared_node(world, gpus=2)
    body = assert_problem(_instance(client, world, node, "a", "3g.40gb", gpu=2), 422)
    assert body["errors"][0]["field"] == "gpu_index" and f"node '{node}' has no GPU 2: its GPUs are 0-1" in body["detail"]
    body = assert_problem(_instance(client, world, node, "a", "3g.47gb"), 422)
    assert body["errors"][0]["field"] == "profile" and "3g.47gb is not a MIG profile of the H100 80GB" in body["detail"]
    plain = make_node_row(world, gpus=0)
    world.session.add(Gpu(node_id=plain.id, index=0, model="NVIDIA L40S"))
    world.session.commit()
    make_vdc(world, f"l40s-{next(_names)}", [plain.name], {"a": {}})
    body = assert_problem(_instance(client, world, plain.name, "a", "1g.10gb"), 422)
    assert "(NVIDIA L40S) does not support MIG: lease the node whole instead" in body["detail"]
    assert world.session.exec(select(GpuInstanceLease)).all() == []


def test_whole_node_and_instance_leases_exclude_each_other(client: TestClient, world: World) -> None:
    admin = world.headers("admin")
    node = _shared_node(world)
    soon = (utcnow() + timedelta(hours=1)).isoformat()
    whole = client.post("/api/v1/leases", json={"node": node, "tenant": "tenant-a", "ends_at": soon}, headers=admin).json()
    body = assert_problem(_instance(client, world, node, "b", "1g.10gb"), 409)
    assert f"node '{node}' is leased whole to tenant 'tenant-a' from " in body["detail"]
    assert _instance(client, world, node, "b", "1g.10gb", starts_at=soon).status_code == 201  # [a, b) and [b, c) touch
    refused = assert_problem(client.post("/api/v1/leases", json={"node": node, "tenant": "tenant-a", "starts_at": soon},
                                         headers=admin), 409)
    assert refused["detail"].startswith(f"node '{node}' has a GPU instance leased to tenant 'tenant-b' from ")
    extend = client.patch(f"/api/v1/leases/{whole['id']}", json={"ends_at": "2099-01-01T00:00:00Z"}, headers=admin)
    assert "a GPU instance of the node is leased before that" in assert_problem(extend, 409)["detail"]
    assert len(world.session.exec(select(Lease)).all()) == 1


def test_quotas_count_instances_by_compute_fraction(client: TestClient, world: World) -> None:
    node = _shared_node(world, a={"max_gpus": 1})
    assert _instance(client, world, node, "a", "3g.40gb").status_code == 201
    assert _instance(client, world, node, "a", "3g.40gb", gpu=1).status_code == 201
    body = assert_problem(_instance(client, world, node, "a", "2g.20gb", gpu=1), 409)
    assert body["detail"] == (f"quota exceeded: tenant 'tenant-a' in VDC 'vdc-{node}' allows 1 GPU(s); "
                              "6/7 in use and this lease needs 2/7 (over by 1/7)")
    [vdc] = [v for v in client.get("/api/v1/vdcs", headers=world.headers("admin")).json() if v["name"] == f"vdc-{node}"]
    assert (vdc["tenants"][0]["used"]["gpus"], vdc["tenants"][0]["used"]["instance_gpus"]) == (0, "0.857143")
    hours = _shared_node(world, gpus=1, a={"max_gpu_hours": 1})
    month_start, _ = period_of(utcnow())
    span = {"starts_at": (month_start + timedelta(hours=1)).isoformat(), "ends_at": (month_start + timedelta(hours=3)).isoformat()}
    body = assert_problem(_instance(client, world, hours, "a", "4g.40gb", **span), 409)  # 4/7 x 2 h
    assert "0.000000 in use and this lease needs 1.142857 (over by 0.142857)" in body["detail"]
    assert _instance(client, world, hours, "a", "3g.40gb", **span).status_code == 201  # 6/7 GPU-hour
    whole = client.post("/api/v1/leases", json={"node": node, "tenant": "tenant-a", "starts_at": span["starts_at"],
                                                "ends_at": span["ends_at"]}, headers=world.headers("admin"))
    assert whole.status_code == 409  # the node's GPUs are partly leased as instances


def test_concurrent_instance_and_node_leases_one_winner(client: TestClient, world: World, engine) -> None:
    node = make_node_row(world, gpus=1).name
    for tenant in ("a", "b"):  # through two VDCs: only the node row's lock orders the requests
        make_vdc(world, f"race-{tenant}-{node}", [node], {tenant: {}})
    callers = [world.make_caller(Role.INFRA_ADMIN) for _ in range(8)]
    barrier = threading.Barrier(len(callers))
    statuses: list[int] = []

    def attempt(index: int) -> None:
        barrier.wait()
        tenant = "tenant-a" if index % 2 else "tenant-b"
        if index % 4 == 3:  # some ask for the whole node, the rest for a 4g instance: only one may win
            response = client.post("/api/v1/leases", json={"node": node, "tenant": tenant}, headers=callers[index].headers)
        else:
            response = client.post(PATH, json={"node": node, "tenant": tenant, "gpu_index": 0, "profile": "4g.40gb"},
                                   headers=callers[index].headers)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(callers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses.count(201) == 1 and set(statuses) <= {201, 409, 503}, statuses
    with Session(engine) as session:
        held = len(session.exec(select(GpuInstanceLease)).all()) + len(session.exec(select(Lease)).all())
    assert held == 1


def test_tenants_see_the_node_but_never_each_others_instances(client: TestClient, world: World) -> None:
    node = _shared_node(world, gpus=1)
    mine = _instance(client, world, node, "a", "3g.40gb").json()
    theirs = _instance(client, world, node, "b", "1g.10gb").json()
    for reader, own, foreign in (("a_member", mine, theirs), ("b_member", theirs, mine)):
        headers = world.headers(reader)
        assert [n["name"] for n in client.get("/api/v1/nodes", headers=headers).json()] == [node]
        assert [l["id"] for l in client.get(PATH, headers=headers).json()] == [own["id"]]
        assert [l["id"] for l in client.get(PATH, params={"node": node}, headers=headers).json()] == [own["id"]]
        assert_problem(client.get(f"{PATH}/{foreign['id']}", headers=headers), 404)
        assert client.get("/api/v1/leases", headers=headers).json() == []
        events = client.get(f"/api/v1/nodes/{own['node_id']}/events", headers=headers)
        assert foreign["tenant"] not in events.text
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert [(s.labels, round(s.value, 6)) for s in families["kiln_lease_gpus"].samples] == [
        ({"tenant": "tenant-a", "node": node}, 0.428571), ({"tenant": "tenant-b", "node": node}, 0.142857)]
    ended = client.patch(f"{PATH}/{mine['id']}", json={"ends_at": utcnow().isoformat()}, headers=world.headers("a_admin"))
    assert ended.status_code == 200, ended.text
    assert client.get("/api/v1/nodes", headers=world.headers("a_member")).json() == [], "no instance in force, no node"


def test_cli_leases_a_gpu_instance(engine, tmp_path: Path) -> None:
    env = base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False), KILN_SECRET_KEY="k" * 40)
    csv = tmp_path / "nodes.csv"
    csv.write_text("name,provisioner,bmc_address,bmc_username,bmc_password,rack,gpu_model,gpu_count\n"
                   "m1,fake,ipmi://10.0.0.1,a,b,r1,NVIDIA H100 80GB HBM3,2\n")
    assert run(env, "nodes", "import", str(csv)).returncode == 0
    assert run(env, "tenants", "create", "acme").returncode == 0
    assert run(env, "vdcs", "create", "mig", "--node", "m1").returncode == 0
    assert run(env, "vdcs", "grant", "mig", "acme").returncode == 0
    created = run(env, "leases", "create", "m1", "acme", "--gpu", "1", "--profile", "3g.40gb")
    assert created.returncode == 0 and created.stdout.startswith("GPU instance lease ") and "m1 GPU 1 3g.40gb" in created.stdout
    listed = json.loads(run(env, "leases", "list", "--output", "json").stdout)
    assert [(l["node"], l["gpu_index"], l["profile"], l["compute_fraction"]) for l in listed] == [("m1", 1, "3g.40gb", "3/7")]
    table = run(env, "leases", "list").stdout
    assert "3g.40gb" in table and "gpu_index" in table
    for args, message in (
        (("--gpu", "1"), "--gpu and --profile go together"),
        (("--gpu", "1", "--profile", "5g.40gb"), "profile"),
        (("--gpu", "1", "--profile", "7g.80gb"), "does not fit beside instance lease"),
    ):
        refused = run(env, "leases", "create", "m1", "acme", *args)
        assert refused.returncode == 1 and refused.stderr.startswith("kiln: error: ") and message in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert run(env, "leases", "end", str(listed[0]["id"]), "--instance").returncode == 0
    assert json.loads(run(env, "leases", "list", "--active", "--output", "json").stdout) == []
