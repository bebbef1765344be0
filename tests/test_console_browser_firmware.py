"""The firmware compliance page in a real browser (Debian Chromium through Playwright) against the
real app: inventories the Redfish collector read from sushy-static serving DMTF's public-rackmount1
mockup (BMC `1.45.455b66-rev4`, BIOS `P79 v1.45`, `SS` `2.50`), a baseline imported through
`fleet.firmware`, the "behind only" filter, the CSV download, and tenancy."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from collectors.store import persist_results
from fleet.firmware import import_csv
from fleet.provisioning.fake import FakeDriver
from kiln.auth import Principal
from tests.browser import ConsoleErrors, running_console, screenshot, seed_fleet, signed_in_page
from tests.peer_fixtures import poll_mockup, redfish_mockup_url  # noqa: F401 (a fixture)

READ = ("gpu-a01", "gpu-free1")  # polled over Redfish; the other seeded nodes never were
BASELINE = "resource_class,component,version\ngpu.h100,bmc,1.45.455b66-rev4\ngpu.h100,BIOS,P79 v1.45\ngpu.h100,SS,2.60\n"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, redfish_mockup_url: str) -> Iterator[Any]:  # noqa: F811
    driver = FakeDriver(delay=0.05)

    def seed(session: Session, engine: Any, settings: Any) -> None:
        seed_fleet(session, engine, settings, driver)
        at = datetime(2026, 11, 3, 8, 15, tzinfo=UTC)
        persist_results(session, "redfish", [poll_mockup(redfish_mockup_url, name, at) for name in READ])
        import_csv(session, Principal.system("test"), BASELINE, "test")
        session.commit()

    with running_console(tmp_path_factory.mktemp("console-firmware"), driver, seed) as running:
        yield running


def page_as(console: Any, username: str, path: str) -> tuple[Any, ConsoleErrors]:
    return signed_in_page(console, username, path, accept_downloads=True)


def grid_nodes(page: Any) -> list[str]:
    return page.locator("#firmware-table .ag-center-cols-container [col-id='node']").all_inner_texts()


def test_admins_see_who_is_behind_filter_it_and_download_it(console: Any) -> None:
    page, errors = page_as(console, "ops-admin", "/firmware")
    page.wait_for_selector("#firmware-table .ag-cell")
    assert page.inner_text("#stat-components-behind") == "2" and page.inner_text("#stat-firmware-behind") == "2"
    assert page.inner_text("#stat-firmware-nodes") == "6"  # every seeded node is gpu.h100
    assert page.locator("#nav-firmware").count() == 1
    text = page.inner_text("#firmware-table")
    for word in ("ok", "behind", "unknown", "never", "1.45.455b66-rev4", "P79 v1.45", "2.50", "2.60"):
        assert word in text, word
    assert len(grid_nodes(page)) == 6 * 3  # 6 nodes x 3 baseline components
    screenshot(page, "admin-firmware")
    page.click("#firmware-behind-only")
    page.wait_for_function("() => document.querySelectorAll('#firmware-table .ag-center-cols-container .ag-row').length === 2")
    assert sorted(grid_nodes(page)) == sorted(READ)
    assert "unknown" not in page.inner_text("#firmware-table")
    with page.expect_download() as download:
        page.click("#firmware-download")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert sorted((r["node"], r["firmware_id"], r["expected"], r["actual"], r["status"]) for r in rows) == [
        (name, "SS", "2.60", "2.50", "behind") for name in READ]
    assert errors.messages == []
    page.context.close()


def test_tenants_get_a_403_page_and_only_their_nodes_in_the_file(console: Any) -> None:
    page, errors = page_as(console, "alice", "/usage")
    assert page.locator("#nav-firmware").count() == 0
    response = page.goto(f"{console.base_url}/firmware")
    assert response.status == 403
    page.wait_for_selector("#forbidden-title")
    file = page.request.get(f"{console.base_url}/downloads/firmware-compliance.csv")
    assert file.status == 200
    assert {r["node"] for r in csv.DictReader(io.StringIO(file.text()))} == {"gpu-a01", "gpu-a02"}  # leased to tenant-a
    assert page.request.get(f"{console.base_url}/downloads/firmware-compliance.csv?status=late").status == 404
    page.context.close()
