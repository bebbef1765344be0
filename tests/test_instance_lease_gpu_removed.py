"""A GPU instance lease keeps being billed for its hours, to the cent, after its GPU's row is removed
or replaced (an admin's edit of the node's GPUs, an inventory re-sync); quotas, embodied emissions
and the lease listings (API, `kiln leases list`) still count and show it; a GPU that an instance
lease holds now or later cannot be removed or swapped for another MIG family; efficiency still
finds the instance's series. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete
from sqlmodel import select

from fleet.instance_leases import create_instance_lease
from fleet.models import Gpu
from fleet.nodes import update_node
from fleet.schemas import GpuSpec, NodeUpdate
from fleet.tenancy_schemas import GpuInstanceLeaseCreate
from fleet.usage import gpu_hours_in_period
from kiln.db import utcnow
from metering.allocation import allocation_rows
from metering.carbon import emissions
from metering.efficiency import efficiency_between
from tests.api_base import assert_problem
from tests.cli_helpers import base_env, run as run_cli
from tests.factories import World
from tests.fleet_helpers import make_node_row, make_vdc
from tests.metering_helpers import GPU_SKU, SYSTEM, at, bill_of, card, lines_of, money, node, run
from tests.test_instance_lease_efficiency import END, START, _fleet, _principal

D = Decimal
H100 = "NVIDIA H100 80GB HBM3"


def _remove(world: World, node_id: int, how: str) -> None:
    if how == "deleted":  # any path that drops the row (a re-sync, a script): straight in the database
        world.session.execute(delete(Gpu).where(Gpu.node_id == node_id))
    else:
        gpus = [] if how == "removed" else [GpuSpec(index=0, model="NVIDIA A30 24GB")]
        update_node(world.session, SYSTEM, node_id, NodeUpdate(gpus=gpus))
    world.session.commit()
    world.session.expire_all()


def _figures(world: World) -> tuple:
    bills = tuple(tuple(money(lines_of(world, bill_of(world, t)))) for t in "ab")
    report = emissions(world.session, SYSTEM, "2026-10", None, embodied={"gpu.h100": D("1.25")})
    embodied = sorted((r.tenant, r.embodied_kg_co2e) for r in report.tenants)
    quota = gpu_hours_in_period(world.session, at("2026-10-01T12:00"), tenant_id=world.a.id)
    return bills, embodied, quota


@pytest.mark.parametrize("how", ["removed", "replaced", "deleted"])
def test_an_ended_instance_lease_is_billed_the_same_after_its_gpu_row_goes(world: World, how: str) -> None:
    gpu_node = node(world, gpus=1, created_at=at("2026-10-01T10:00"))
    make_vdc(world, f"vdc-{gpu_node.name}", [gpu_node.name], {"a": {}, "b": {}})
    for tenant, profile, end in (("a", "3g.40gb", "2026-10-01T12:00"), ("b", "1g.10gb", "2026-10-01T11:00")):
        create_instance_lease(world.session, SYSTEM, GpuInstanceLeaseCreate(
            node=gpu_node.name, tenant=f"tenant-{tenant}", gpu_index=0, profile=profile,
            starts_at=at("2026-10-01T10:00"), ends_at=at(end)))
    world.session.commit()
    card(world, GPU_SKU, "2.80")
    run(world, now="2026-10-01T12:00")
    before = _figures(world)
    # A: 3/7 x 2 h x 2.80 = 2.40; B: 1/7 x 1 h x 2.80 = 0.40; A's embodied: 6/7 GPU-h of a 1-GPU node x 1.25 kg
    assert before == ((((f"{GPU_SKU}:3g.40gb", D("0.857143"), D("2.8"), D("2.40")),),
                       ((f"{GPU_SKU}:1g.10gb", D("0.142857"), D("2.8"), D("0.40")),)),
                      [("tenant-a", D("1.071")), ("tenant-b", D("0.179"))], D("0.857143"))
    _remove(world, gpu_node.id, how)
    run(world, now="2026-10-01T12:00")  # the draft bills rebuilt from usage rebuilt without the GPU row
    assert _figures(world) == before


def _mig_node(world: World, gpus: int = 2) -> str:
    row = make_node_row(world, gpus=gpus)
    make_vdc(world, f"vdc-{row.name}", [row.name], {"a": {}, "b": {}})
    return row.name


def test_a_gpu_an_instance_lease_holds_cannot_be_removed_or_replaced(client: TestClient, world: World) -> None:
    name = _mig_node(world)
    admin = world.headers("admin")
    [node_id] = [n["id"] for n in client.get("/api/v1/nodes", headers=admin).json() if n["name"] == name]
    start = (utcnow() - timedelta(hours=2)).replace(microsecond=0)
    lease = client.post("/api/v1/gpu-instance-leases", json={"node": name, "tenant": "tenant-a", "gpu_index": 1,
                                                             "profile": "3g.40gb", "starts_at": start.isoformat()},
                        headers=admin).json()
    gpus = lambda *models: {"gpus": [{"index": i, "model": m} for i, m in enumerate(models)]}  # noqa: E731
    for payload in (gpus(H100), gpus(H100, "NVIDIA A30 24GB"), gpus(H100, "NVIDIA A100-SXM4-80GB"), {"gpus": []}):
        body = assert_problem(client.patch(f"/api/v1/nodes/{node_id}", json=payload, headers=admin), 409)
        assert f"GPU 1: instance lease {lease['id']} (3g.40gb, tenant 'tenant-a', from " in body["detail"]
        assert body["detail"].endswith("end those leases first")
    world.session.expire_all()
    assert [(g.index, g.model) for g in world.session.exec(select(Gpu).where(Gpu.node_id == node_id).order_by(Gpu.index))] == [
        (0, H100), (1, H100)], "a refused change changes nothing"
    renamed = client.patch(f"/api/v1/nodes/{node_id}", json=gpus(H100, "NVIDIA H100 SXM5 80GB"), headers=admin)
    assert renamed.status_code == 200, renamed.text  # the same MIG family: the lease's instance still exists
    end = (start + timedelta(hours=1)).isoformat()
    assert client.patch(f"/api/v1/gpu-instance-leases/{lease['id']}", json={"ends_at": end}, headers=admin).status_code == 200
    assert client.patch(f"/api/v1/nodes/{node_id}", json={"gpus": []}, headers=admin).status_code == 200
    for headers in (admin, world.headers("a_member")):
        [listed] = [l for l in client.get("/api/v1/gpu-instance-leases", headers=headers).json() if l["id"] == lease["id"]]
        assert (listed["gpu_model"], listed["compute_fraction"], listed["gpu_index"]) == (H100, "3/7", 1)


def test_cli_lists_an_instance_lease_whose_gpu_is_gone(engine, tmp_path: Path) -> None:
    env = base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False), KILN_SECRET_KEY="k" * 40)
    (tmp_path / "nodes.csv").write_text("name,provisioner,bmc_address,bmc_username,bmc_password,rack,gpu_model,gpu_count\n"
                                        f"gone1,fake,ipmi://10.0.0.9,a,b,r1,{H100},2\n")
    for args in (("nodes", "import", str(tmp_path / "nodes.csv")), ("tenants", "create", "gone"),
                 ("vdcs", "create", "gone", "--node", "gone1"), ("vdcs", "grant", "gone", "gone"),
                 ("leases", "create", "gone1", "gone", "--gpu", "1", "--profile", "2g.20gb")):
        assert run_cli(env, *args).returncode == 0, args
    with engine.begin() as connection:
        connection.execute(delete(Gpu))
    listed = json.loads(run_cli(env, "leases", "list", "--output", "json").stdout)
    assert [(l["node"], l["gpu_model"], l["compute_fraction"]) for l in listed] == [("gone1", H100, "2/7")]


def test_efficiency_and_allocation_are_the_same_after_the_gpu_row_goes(world: World) -> None:
    _fleet(world)  # the lease recorded its GPU's UUID: its MIG instance's series is still found
    admin = _principal(world, "admin")

    def figures() -> tuple:
        return (sorted(efficiency_between(world.session, admin, START, END, now=END), key=lambda r: r.tenant),
                sorted(allocation_rows(world.session, admin, START, END, now=END), key=lambda r: r.tenant))

    before = figures()
    assert [r.used_gpu_hours for r in before[0]] == [D("0.2571"), D("0.0000")]  # as measured with the GPU row
    world.session.execute(delete(Gpu))
    world.session.commit()
    world.session.expire_all()
    assert figures() == before
