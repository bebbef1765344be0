"""The VDC editor in a real browser (Debian Chromium through Playwright) against the real app:
an infra admin creates a VDC with selectors, explicit nodes, VDC quotas and per-tenant grants,
changes it and deletes it; refusals (bad name, a name taken, a negative quota, leases in force)
are shown beside the form with the service's problem detail and store nothing; tenants get the
403 page and a crafted callback from them changes nothing and reveals no grant."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlmodel import Session

from fleet.provisioning.fake import FakeDriver
from fleet.tenancy_schemas import VdcPublic
from fleet.vdcs import list_vdcs, to_public
from kiln.auth import Principal
from tests.browser import (
    ConsoleErrors,
    axe_violations,
    choose,
    fleet_seeded,
    post_callback,
    press,
    running_console,
    screenshot,
    signed_in_page,
)

SYSTEM = Principal.system("test")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = FakeDriver(delay=0.05)
    with running_console(tmp_path_factory.mktemp("console-vdcs"), driver,
                         fleet_seeded(driver)) as running:
        yield running


def stored(console: Any) -> dict[str, VdcPublic]:
    """Every VDC as the API would return it to an infra admin, by name."""
    with Session(console.engine) as session:
        return {v.name: v for v in to_public(session, SYSTEM, list_vdcs(session, SYSTEM))}


def definitions(console: Any) -> dict[str, dict]:
    """What is stored of each VDC (its fields, members and grants, not its use, which grows by the second)."""
    return {name: v.model_dump(exclude={"used": True, "tenants": {"__all__": {"used"}}}) for name, v in stored(console).items()}


def page_as(console: Any, username: str, path: str) -> tuple[Any, ConsoleErrors]:
    return signed_in_page(console, username, path, viewport={"width": 1400, "height": 1100})


def grant_box(page: Any, quota: str, tenant: str) -> Any:
    return page.locator(f"[id='{{\"tenant\":\"{tenant}\",\"type\":\"vdc-grant-{quota}\"}}']")


def grant(page: Any, tenant: str, choice: str) -> None:
    """Grant the VDC to the tenant or not: in the tenant's row, after adding the row through
    "Grant to" when it has none (a new row is granted)."""
    dom_id = f'{{"tenant":"{tenant}","type":"vdc-grant-on"}}'
    if page.locator(f"[id='{dom_id}']").count() == 0:
        choose(page, "vdc-grant-add", tenant)
        page.wait_for_selector(f"[id='{dom_id}']")
        if choice == "granted":
            return
    page.click(f"[id='{dom_id}']")
    page.get_by_role("option", name=choice, exact=True).click()


def grant_choice(page: Any, tenant: str) -> str:
    return page.inner_text(f"[id='{{\"tenant\":\"{tenant}\",\"type\":\"vdc-grant-on\"}}']")


def save_and_read(page: Any) -> str:
    return press(page, "#vdc-save", "vdc-save", "vdc-form-message")


def test_an_admin_creates_changes_and_deletes_a_vdc(console: Any) -> None:
    page, errors = page_as(console, "ops-admin", "/vdcs")
    page.wait_for_selector("#vdc-editor")
    page.fill("#vdc-name", "infer")
    page.fill("#vdc-description", "inference pool")
    page.fill("#vdc-rack", "r9, r10")
    page.fill("#vdc-tag", "infer")
    page.fill("#vdc-nodes", "gpu-free1")
    page.fill("#vdc-max_gpus", "16")
    page.fill("#vdc-budget", "1200.50")
    assert grant_box(page, "max_gpus", "tenant-a").count() == 0  # no row until the tenant is added
    grant(page, "tenant-a", "granted")
    assert grant_choice(page, "tenant-a") == "granted" and not grant_box(page, "max_gpus", "tenant-a").is_disabled()
    with page.expect_response(lambda r: "_dash-update-component" in r.url and "vdc-grant-add" in (r.request.post_data or "")):
        choose(page, "vdc-grant-add", "tenant-a")  # added twice: still one row
    assert page.locator("tr[id*='vdc-grant-row'][id*='tenant-a']").count() == 1
    grant(page, "tenant-b", "granted")
    grant_box(page, "max_gpus", "tenant-a").fill("4")
    grant_box(page, "max_gpu_hours", "tenant-a").fill("700")
    grant_box(page, "max_nodes", "tenant-b").fill("1")
    assert save_and_read(page) == "VDC infer created."
    vdc = stored(console)["infer"]
    assert vdc.description == "inference pool" and vdc.nodes == ["gpu-free1"] and vdc.member_nodes == ["gpu-free1"]
    assert sorted((s.kind, s.value) for s in vdc.selectors) == [("rack", "r10"), ("rack", "r9"), ("tag", "infer")]
    assert (vdc.max_gpus, vdc.max_nodes, vdc.budget) == (16, None, Decimal("1200.5"))
    assert [(g.tenant, g.max_nodes, g.max_gpus, g.max_gpu_hours) for g in vdc.tenants] == [
        ("tenant-a", None, 4, 700), ("tenant-b", 1, None, None)]
    page.wait_for_function("() => document.querySelector('#vdc-table').innerText.includes('infer')")
    assert "tenant-a, tenant-b" in page.inner_text("#vdc-table")
    # the grants grid (paged on the server) asks again for its rows when the overview is redrawn
    page.wait_for_function("() => document.querySelector('#grant-table').innerText.includes('infer')")
    assert "0 of 4" in page.inner_text("#grant-table")  # tenant-a: no GPU leased in it yet, 4 at most
    # the saved VDC is now picked: its name is permanent, its fields are what was stored
    assert page.is_disabled("#vdc-name") and page.input_value("#vdc-name") == "infer"
    assert page.input_value("#vdc-budget") == "1200.5" and grant_box(page, "max_gpu_hours", "tenant-a").input_value() == "700"
    screenshot(page, "admin-vdc-created")

    grant(page, "tenant-b", "not granted")
    page.wait_for_function("() => document.querySelector('[id*=\"vdc-grant-max_nodes\"][id*=\"tenant-b\"]').disabled")
    grant_box(page, "max_gpus", "tenant-a").fill("6")
    page.fill("#vdc-max_gpus", "")  # cleared: no VDC-wide GPU limit any more
    page.fill("#vdc-tag", "")
    assert save_and_read(page) == "VDC infer saved."
    vdc = stored(console)["infer"]
    assert [(g.tenant, g.max_gpus, g.max_gpu_hours) for g in vdc.tenants] == [("tenant-a", 6, 700)]
    assert vdc.max_gpus is None and sorted(s.value for s in vdc.selectors) == ["r10", "r9"]

    choose(page, "vdc-pick", "train")  # the seeded VDC: its fields are loaded
    page.wait_for_function("() => document.querySelector('#vdc-name').value === 'train'")
    assert grant_choice(page, "tenant-a") == grant_choice(page, "tenant-b") == "granted"
    assert grant_box(page, "max_gpu_hours", "tenant-a").input_value() == "5000"
    assert grant_box(page, "max_gpus", "tenant-b").input_value() == "8" and page.input_value("#vdc-max_gpus") == "32"
    assert axe_violations(page) == []  # the editor filled in, grants and all
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#vdc-delete")  # tenants hold leases in it: refused, kept
    page.wait_for_selector("#vdc-form-message .notice.error")
    assert page.inner_text("#vdc-form-message") == "Conflict: VDC 'train' has leases in force: end them first"
    assert "train" in stored(console)

    choose(page, "vdc-pick", "infer")
    page.wait_for_function("() => document.querySelector('#vdc-name').value === 'infer'")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#vdc-delete")
    page.wait_for_function("() => document.querySelector('#vdc-form-message').innerText === 'VDC infer deleted.'")
    assert "infer" not in stored(console)
    page.wait_for_function("() => !document.querySelector('#vdc-table').innerText.includes('infer')")
    page.wait_for_function("() => !document.querySelector('#grant-table').innerText.includes('infer')")
    page.wait_for_function("() => document.querySelector('#vdc-name').value === ''")  # back on "New VDC"
    assert not page.is_disabled("#vdc-name") and page.is_disabled("#vdc-delete")
    assert errors.messages == []
    page.context.close()


@pytest.mark.parametrize(("name", "nodes", "quota", "problem"), [
    ("Bad Name!", "gpu-free2", "3", "Validation failed: name: String should match pattern"),
    ("train", "gpu-free2", "3", "Conflict: a VDC named 'train' already exists"),
    ("fresh", "gpu-free2", "-1", "Validation failed: tenants.0.max_gpus: Input should be greater than or equal to 0"),
    ("fresh", "gpu-free2, gpu-nope", "3", "Not found: no such node: gpu-nope"),
])
def test_refusals_are_shown_next_to_the_form_and_store_nothing(console: Any, name: str, nodes: str, quota: str,
                                                               problem: str) -> None:
    before = definitions(console)
    page, errors = page_as(console, "ops-admin", "/vdcs")
    page.fill("#vdc-name", name)
    page.fill("#vdc-nodes", nodes)
    grant(page, "tenant-a", "granted")
    grant_box(page, "max_gpus", "tenant-a").fill(quota)
    assert save_and_read(page).startswith(problem)
    assert page.locator("#vdc-form-message [role=alert]").count() == 1
    assert definitions(console) == before
    assert page.input_value("#vdc-name") == name  # what was typed stays, to be corrected
    assert errors.messages == []
    page.context.close()


def _save_request(tenant: str, name: str) -> tuple[list, list]:
    """The save callback's inputs and states as the browser sends them, granting `tenant`."""
    plain = ("vdc-name", "vdc-description", "vdc-rack", "vdc-tag", "vdc-resource_class", "vdc-gpu_model", "vdc-nodes",
             "vdc-max_nodes", "vdc-max_gpus", "vdc-max_gpu_hours", "vdc-budget")
    values = {"vdc-name": name, "vdc-nodes": "gpu-free3"}
    state = [{"id": "vdc-pick", "property": "value", "value": "__new__"}]
    state += [{"id": i, "property": "value", "value": values.get(i)} for i in plain]
    for kind in ("on", "max_nodes", "max_gpus", "max_gpu_hours", "budget"):
        state.append([{"id": {"type": f"vdc-grant-{kind}", "tenant": tenant}, "property": "value",
                       "value": "granted" if kind == "on" else 1}])
    pattern_id = {"type": "vdc-grant-on", "tenant": tenant}
    state.append([{"id": pattern_id, "property": "id", "value": pattern_id}])
    return [{"id": "vdc-save", "property": "n_clicks", "value": 1}], state


def test_tenants_get_403_and_their_crafted_callbacks_change_and_reveal_nothing(console: Any) -> None:
    before = definitions(console)
    page, _ = page_as(console, "alice", "/usage")  # the 403 page load is logged as a console error
    assert page.locator("#nav-vdcs").count() == 0
    assert page.goto(f"{console.base_url}/vdcs").status == 403
    page.wait_for_selector("#forbidden-title")
    assert page.locator("#vdc-editor").count() == 0
    inputs, state = _save_request("tenant-a", "mine")
    answer = post_callback(page, console.base_url, "vdc-save", inputs, state)
    assert answer.status == 200
    assert "Forbidden: role tenant-member may not create VDCs" in answer.text()
    assert definitions(console) == before
    # loading the seeded VDC into the form as a tenant: nothing comes back, tenant-b's grant least of all
    outputs = [{"id": i, "property": p} for i, p in (
        ("vdc-name", "value"), ("vdc-description", "value"), ("vdc-rack", "value"), ("vdc-tag", "value"),
        ("vdc-resource_class", "value"), ("vdc-gpu_model", "value"), ("vdc-nodes", "value"), ("vdc-max_nodes", "value"),
        ("vdc-max_gpus", "value"), ("vdc-max_gpu_hours", "value"), ("vdc-budget", "value"), ("vdc-name", "disabled"),
        ("vdc-delete", "disabled"))]
    outputs.append({"id": "vdc-grant-rows", "property": "children"})
    loaded = post_callback(page, console.base_url, "vdc-pick", [{"id": "vdc-pick", "property": "value",
                                                                          "value": "train"}], [], outputs)
    assert loaded.status == 204 and "tenant-b" not in loaded.text()
    # asking for a block of the grants grid as a tenant: nothing comes back either
    block = post_callback(page, console.base_url, "grant-table-grid", [{"id": "grant-table-grid", "property": "getRowsRequest",
                                                                        "value": {"startRow": 0, "endRow": 50}}], [])
    assert block.status == 200 and block.json()["response"] == {}, block.text()  # no output updated
    page.context.close()
