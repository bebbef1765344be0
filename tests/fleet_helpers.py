"""Helpers for fleet tests: node payloads and leases made directly in the database."""

from __future__ import annotations

import itertools
import time
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient

from fleet.models import Gpu, Node
from fleet.tenancy_models import Lease
from fleet.tenancy_schemas import VdcCreate
from fleet.vdcs import create_vdc
from kiln.auth import Principal
from kiln.db import utcnow
from tests.factories import World

_numbers = itertools.count(1)


def node_payload(provisioner: str = "fake", **overrides: Any) -> dict[str, Any]:
    """A valid NodeCreate body with a unique name and MAC."""
    n = next(_numbers)
    payload = {
        "name": f"node-{n:04d}",
        "provisioner": provisioner,
        "bmc_address": f"ipmi://10.1.{n // 250}.{n % 250 + 1}:623",
        "bmc_username": "admin",
        "bmc_password": "bmc-secret-password",
        "boot_mac": f"52:54:00:{n // 65536 % 256:02x}:{n // 256 % 256:02x}:{n % 256:02x}",
        "resource_class": "gpu.h100",
        "rack": "r1",
        "tags": ["train"],
        "facts": {"cpu_model": "AMD EPYC 9454", "cpu_cores": 96, "ram_mib": 1572864},
        "gpus": [
            {"index": i, "model": "NVIDIA H100 80GB HBM3", "vendor": "nvidia", "uuid": f"GPU-{n:04d}-{i}", "memory_mib": 81559}
            for i in range(2)
        ],
    }
    payload.update(overrides)
    return payload


def lease_node(world: World, node_id: int, tenant: str, **recorded: Any) -> None:
    """Give tenant `a` or `b` an open lease on the node, starting an hour ago (`created_at` may
    say when it was recorded)."""
    world.session.add(
        Lease(tenant_id=world.tenant(tenant).id, node_id=node_id, starts_at=utcnow() - timedelta(hours=1), created_by="test",
              **recorded)
    )
    world.session.commit()


def wait_operations(client: TestClient, headers: dict[str, str], timeout: float = 20, **query: Any) -> list[dict]:
    """Poll GET /api/v1/operations until none is pending or running."""
    deadline = time.monotonic() + timeout
    while True:
        operations = client.get("/api/v1/operations", params=query, headers=headers).json()
        if operations and all(o["status"] in {"succeeded", "failed"} for o in operations):
            return operations
        assert time.monotonic() < deadline, f"operations still running: {operations}"
        time.sleep(0.05)


def make_node_row(world: World, gpus: int = 8, **fields: Any) -> Node:
    """A node row straight in the database (no driver), with `gpus` H100s."""
    n = next(_numbers)
    node = Node(
        name=fields.pop("name", f"row-node-{n:04d}"), provisioner="fake", bmc_driver="ipmi",
        bmc_address=fields.pop("bmc_address", f"ipmi://10.9.{n // 250}.{n % 250 + 1}"), provision_state="active",
        **fields,
    )
    world.session.add(node)
    world.session.flush()
    for index in range(gpus):
        world.session.add(Gpu(node_id=node.id, index=index, model="NVIDIA H100 80GB HBM3"))
    world.session.commit()
    return node


def make_vdc(world: World, name: str, nodes: list[str], grants: dict[str, dict[str, Any]], **quotas: Any) -> None:
    """A VDC over explicit nodes granted to tenants `a`/`b` with per-tenant quotas."""
    data = VdcCreate(
        name=name, nodes=nodes, tenants=[{"tenant": world.tenant(t).slug, **q} for t, q in grants.items()], **quotas
    )
    create_vdc(world.session, Principal.system("test"), data)
    world.session.commit()
