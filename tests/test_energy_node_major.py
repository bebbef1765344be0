"""Usage and energy are built node by node: the same rows whether the energy rows are written
after every node or all at once, every node's claims reach its energy split (instance-leased
nodes without pods, pods on nodes Kiln does not know), and the Kubernetes claims come out in node
id order, one node at a time. On SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import delete
from sqlmodel import select

from collectors.models import GpuEnergyHour, K8sAllocation, NodeEnergyHour
from fleet.instance_leases import create_instance_lease
from fleet.models import Node
from fleet.tenancy_schemas import GpuInstanceLeaseCreate
from metering import energy_usage as energy_module
from metering.intervals import HourlyTotals
from metering.models import UsageRecord
from metering.usage import _gpu_models, _leases, build_usage, k8s_usage
from metering.instance_usage import instance_claims
from tests.factories import World
from tests.fleet_helpers import make_vdc
from tests.metering_helpers import SYSTEM, at, lease, node

D = Decimal
DAY = (at("2026-10-01T00:00"), at("2026-10-02T00:00"))
GIB = 2**30


def _pod(world: World, pod: str, tenant: str, node_name: str, resource: str, quantity, start: str, end: str) -> None:
    world.session.add(K8sAllocation(namespace=f"ns-{tenant}", tenant_slug=f"tenant-{tenant}", pod=pod, pod_uid=f"uid-{pod}-{resource}",
                                    node_name=node_name, resource=resource, quantity=D(quantity), starts_at=at(start), ends_at=at(end)))


def _energy(world: World, node_id: int, kwh: str, gpu_kwh: str | None = None) -> None:
    for hour in ("2026-10-01T10:00", "2026-10-01T11:00"):
        world.session.add(NodeEnergyHour(node_id=node_id, hour=at(hour), kwh=D(kwh), covered_seconds=3600))
        if gpu_kwh:
            world.session.add(GpuEnergyHour(entity=f"GPU-{node_id}", node_id=node_id, hour=at(hour), kwh=D(gpu_kwh),
                                            covered_seconds=3600))


@pytest.fixture
def fleet(world: World) -> dict[str, int]:
    """Five kinds of node, each with metered energy: time-sliced pods, a MIG instance lease and
    no pods, MIG pods with CPU and memory, a whole-node lease under pods, and energy nobody used."""
    facts = {"cpu_cores": 32, "ram_mib": 256 * 1024}
    sliced, instanced, mig, leased, idle = (node(world, gpus=2, facts=facts) for _ in range(5))
    make_vdc(world, "vdc-inst", [instanced.name], {"a": {}, "b": {}})
    for n in range(3):  # three pods on two GPUs: time-sliced
        _pod(world, f"nb{n}", "ab"[n % 2], sliced.name, "nvidia.com/gpu", 1, "2026-10-01T10:00", "2026-10-01T12:00")
    create_instance_lease(world.session, SYSTEM, GpuInstanceLeaseCreate(
        node=instanced.name, tenant="tenant-b", gpu_index=1, profile="3g.40gb",
        starts_at=at("2026-10-01T10:15"), ends_at=at("2026-10-01T11:45")))
    _pod(world, "mig", "a", mig.name, "nvidia.com/mig-1g.10gb", 2, "2026-10-01T10:00", "2026-10-01T11:30")
    _pod(world, "mig", "a", mig.name, "cpu", 8, "2026-10-01T10:00", "2026-10-01T11:30")
    _pod(world, "etl", "b", mig.name, "memory", 64 * GIB, "2026-10-01T10:30", "2026-10-01T12:00")
    lease(world, leased, "a", "2026-10-01T10:30", "2026-10-01T11:00")
    _pod(world, "under", "b", leased.name, "nvidia.com/gpu", 2, "2026-10-01T10:00", "2026-10-01T12:00")
    _pod(world, "ghost", "a", "not-enrolled", "nvidia.com/gpu", 1, "2026-10-01T10:00", "2026-10-01T11:00")
    for row, kwh, gpu_kwh in ((sliced, "1.3", "0.7"), (instanced, "0.9", "0.5"), (mig, "1.1", "0.4"), (leased, "2.0", None),
                              (idle, "0.5", None)):
        _energy(world, row.id, kwh, gpu_kwh)
    world.session.commit()
    return {"sliced": sliced.id, "instanced": instanced.id, "mig": mig.id, "leased": leased.id, "idle": idle.id}


def _rows(world: World) -> list[tuple]:
    world.session.expire_all()
    return sorted((r.tenant_id, r.resource_id, r.sku, r.hour, r.quantity_parts, r.source, r.vdc_id)
                  for r in world.session.exec(select(UsageRecord)).all())


def test_rows_are_the_same_flushed_after_every_node_or_at_the_end(world: World, fleet, monkeypatch) -> None:
    monkeypatch.setattr(energy_module, "FLUSH_NODES", 10_000)
    written = build_usage(world.session, *DAY, now=DAY[1])
    world.session.commit()
    at_once = _rows(world)
    world.session.execute(delete(UsageRecord))
    world.session.commit()
    monkeypatch.setattr(energy_module, "FLUSH_NODES", 1)
    assert build_usage(world.session, *DAY, now=DAY[1]) == written
    world.session.commit()
    assert _rows(world) == at_once
    metered = sum(int(D(row.kwh) * 3_600_000_000) for row in world.session.exec(select(NodeEnergyHour)).all())
    attributed = sum(parts for *_, parts, source, _ in at_once if source == "energy")
    assert 0 < attributed < metered  # the idle node's energy, and unheld parts, stay idle
    resources = {resource for _, resource, _, _, _, source, _ in at_once if source == "energy"}
    # every node someone held got energy: the instance-leased node (no pods) and the leased node included
    for kind in ("sliced", "instanced", "mig", "leased"):
        assert any(r.split("/")[0] == _name(world, fleet[kind]) for r in resources), kind
    assert not any(r.split("/")[0] == _name(world, fleet["idle"]) for r in resources)


def test_claims_come_node_by_node_in_node_id_order(world: World, fleet) -> None:
    start, end = DAY
    held, gpus = _leases(world.session, start, end), _gpu_models(world.session)
    metered = set(fleet.values()) - {fleet["sliced"]}  # one node without energy: counted, no claims kept
    k8s, leased = HourlyTotals(start), HourlyTotals(start)
    seen = []
    for node_id, claims in k8s_usage(world.session, start, end, held, gpus, metered, instance_claims(world.session, start, end),
                                     leased, k8s):
        seen.append(node_id)
        assert bool(claims) == (node_id in metered)
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert set(seen) == set(fleet.values()) - {fleet["idle"]}  # every node with pods or an instance lease, once
    assert {key[1] for key in k8s.partial} | {key[1] for key in k8s.steps} >= {"k8s:ns-a", "k8s:ns-b"}
    assert {key[1] for key in leased.partial} == {_name(world, fleet["instanced"])}  # the instance lease's share


def _name(world: World, node_id: int) -> str:
    return world.session.get(Node, node_id).name
