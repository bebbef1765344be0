"""GPU instance leases in the console, in a real browser (Debian Chromium through Playwright) against
the real app over the seeded fleet (tests.browser.seed_fleet) plus two instance leases of gpu-free1's
GPUs: tenant A's 3g.40gb on GPU 0 (its MIG instance reported by dcgm-exporter-shaped series through
the store) and tenant B's 1g.10gb on GPU 1. Each tenant sees its own instance lease on the usage page
(allocation rows, leases in force) and the node page, never the other's; admins see both, and the
fleet table names them. axe finds nothing serious or critical on those pages."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select

from collectors.base import TargetResult
from collectors.dcgm import DCGM
from collectors.store import persist_results
from fleet.instance_leases import create_instance_lease
from fleet.models import Gpu, Node
from fleet.provisioning.fake import FakeDriver
from fleet.tenancy_schemas import GpuInstanceLeaseCreate, VdcCreate
from fleet.vdcs import create_vdc
from kiln.auth import Principal
from kiln.db import utcnow
from tests.browser import axe_violations, running_console, screenshot, seed_fleet, signed_in_page

NODE = "gpu-free1"
ALLOCATION_ROWS_JS = """() => Array.from(document.querySelectorAll('#usage-allocation-table .ag-center-cols-container .ag-row'))
  .map(r => ['tenant', 'node', 'gpus', 'efficiency'].map(c => (r.querySelector('[col-id=' + c + ']') || {}).innerText))"""
GRID_TEXT_JS = "id => document.querySelector('#' + id).innerText"


def seed(session: Any, engine: Any, settings: Any, driver: Any) -> None:
    """The browser fleet, a VDC `mig` of gpu-free1 granted to both tenants, A's 3g.40gb instance
    (GPU 0) for the last 3 hours at 50 % engine activity and B's 1g.10gb (GPU 1), both open."""
    seed_fleet(session, engine, settings, driver)
    system = Principal.system("test")
    create_vdc(session, system, VdcCreate(name="mig", nodes=[NODE], tenants=[{"tenant": "tenant-a"}, {"tenant": "tenant-b"}]))
    now = utcnow()
    start = (now - timedelta(hours=3)).replace(second=0, microsecond=0)
    for tenant, gpu, profile in (("tenant-a", 0, "3g.40gb"), ("tenant-b", 1, "1g.10gb")):
        create_instance_lease(session, system, GpuInstanceLeaseCreate(node=NODE, tenant=tenant, gpu_index=gpu,
                                                                      profile=profile, starts_at=start))
    session.commit()
    uuid = session.exec(select(Gpu.uuid).join(Node, Node.id == Gpu.node_id).where(Node.name == NODE, Gpu.index == 0)).one()
    spec = DCGM.table()["DCGM_FI_PROF_GR_ENGINE_ACTIVE"]
    labels = {"gpu": "0", "UUID": uuid, "modelName": "NVIDIA H100 80GB HBM3", "Hostname": NODE,
              "GPU_I_PROFILE": "3g.40gb", "GPU_I_ID": "1"}
    for k in range(36):
        ts = start + timedelta(minutes=5 * k)
        persist_results(session, "dcgm", [TargetResult("prometheus", ok=True, samples=[DCGM.sample(spec, labels, 0.5, ts)])],
                        now=ts)
    session.commit()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = FakeDriver(delay=0.05)
    with running_console(tmp_path_factory.mktemp("instance-console"), driver,
                         lambda session, engine, settings: seed(session, engine, settings, driver)) as running:
        yield running


def _usage(console: Any, username: str) -> tuple[Any, list[list[str]], str]:
    page, errors = signed_in_page(console, username, "/usage")
    page.wait_for_selector("#usage-allocation-table .ag-cell")
    rows = page.evaluate(ALLOCATION_ROWS_JS)
    page.click("#usage-details-running")  # the running table is on its own tab, drawn when chosen
    page.wait_for_selector("#running-nodes .ag-cell")
    page.wait_for_function("() => document.querySelectorAll('#running-nodes .ag-center-cols-container .ag-row').length > 0")
    assert errors.messages == []
    return page, rows, page.evaluate(GRID_TEXT_JS, "running-nodes")


def test_each_tenant_sees_its_own_instance_lease_on_the_usage_page_and_never_the_others(console: Any) -> None:
    page, rows, running = _usage(console, "alice")
    screenshot(page, "tenant-a-usage-instances")
    mine = [r for r in rows if r[1] == NODE]
    assert mine == [["tenant-a", NODE, "GPU 0 · 3g.40gb", "50.0"]]  # measured from its MIG instance's series
    assert "GPU 0 · 3g.40gb (3/7 of a NVIDIA H100 80GB HBM3)" in running
    assert "1g.10gb" not in page.content() and "tenant-b" not in page.content()
    assert axe_violations(page) == []

    page, rows, running = _usage(console, "bob")
    assert [r for r in rows if r[1] == NODE] == [["tenant-b", NODE, "GPU 1 · 1g.10gb", ""]]  # no instance series: not measured
    assert "GPU 1 · 1g.10gb (1/7 of a NVIDIA H100 80GB HBM3)" in running
    assert "3g.40gb" not in page.content() and "tenant-a" not in page.content()

    page, rows, running = _usage(console, "ops-admin")
    assert sorted(r[2] for r in rows if r[1] == NODE) == ["GPU 0 · 3g.40gb", "GPU 1 · 1g.10gb"]
    assert "3g.40gb" in running and "1g.10gb" in running
    assert axe_violations(page) == []


def test_the_node_page_lists_the_instance_leases_the_caller_may_see(console: Any) -> None:
    def instance_rows(username: str) -> tuple[Any, list[list[str]]]:
        page, errors = signed_in_page(console, username, f"/nodes/{NODE}")
        page.wait_for_selector("#node-instance-leases tbody tr")
        assert errors.messages == []
        return page, page.evaluate("() => Array.from(document.querySelectorAll('#node-instance-leases tbody tr'))"
                                   ".map(r => Array.from(r.cells).slice(0, 4).map(c => c.innerText))")

    page, rows = instance_rows("alice")
    screenshot(page, "tenant-a-node-instances")
    assert rows == [["0", "3g.40gb", "tenant-a", "mig"]]
    assert "1g.10gb" not in page.content() and "tenant-b" not in page.content()
    assert axe_violations(page) == []
    page, rows = instance_rows("bob")
    assert rows == [["1", "1g.10gb", "tenant-b", "mig"]]
    assert "3g.40gb" not in page.content() and "tenant-a" not in page.content()
    page, rows = instance_rows("ops-admin")
    assert sorted(rows) == [["0", "3g.40gb", "tenant-a", "mig"], ["1", "1g.10gb", "tenant-b", "mig"]]
    assert axe_violations(page) == []


def test_the_fleet_table_names_instance_holders_for_admins(console: Any) -> None:
    page, errors = signed_in_page(console, "ops-admin", "/fleet")
    page.wait_for_function(f"() => document.body.innerText.includes('{NODE}')")
    page.wait_for_function("() => document.body.innerText.includes('tenant-a (GPU 0 · 3g.40gb)')")
    assert "tenant-b (GPU 1 · 1g.10gb)" in page.inner_text("body")
    assert errors.messages == []
