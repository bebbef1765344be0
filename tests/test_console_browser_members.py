"""The members and budgets page in a real browser (Debian Chromium through Playwright) against the
real app: a tenant admin of tenant-a sees and adds members, deactivates and reactivates one, and
creates, changes and deletes the tenant's budgets, through `kiln.users` and `metering.budgets`;
refusals are shown beside the form and store nothing. Tenant-b's members and budgets stay out of
reach — through the page and through crafted callback requests; a tenant member gets a 403."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlmodel import Session, select

from fleet.provisioning.fake import FakeDriver
from kiln.auth import Principal
from kiln.models import Membership, Tenant, User
from kiln.roles import Role
from kiln.users import UserCreate, create_user
from metering.budgets import BudgetCreate, create_budget
from metering.models import Budget
from tests.browser import (
    PASSWORD,
    ConsoleErrors,
    axe_violations,
    choose,
    post_callback,
    press,
    running_console,
    screenshot,
    seed_fleet,
    signed_in_page,
)

SYSTEM = Principal.system("test")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = FakeDriver(delay=0.05)

    def seed(session: Session, engine: Any, settings: Any) -> None:
        seed_fleet(session, engine, settings, driver)
        for username, tenant in (("tara", "tenant-a"), ("tom", "tenant-b")):
            create_user(session, SYSTEM, UserCreate(username=username, role=Role.TENANT_ADMIN, tenants=[tenant],
                                                    password=PASSWORD))
        create_budget(session, SYSTEM, BudgetCreate(tenant="tenant-b", name="b-spend", amount=Decimal(900),
                                                    currency="EUR"))
        session.commit()

    with running_console(tmp_path_factory.mktemp("console-members"), driver, seed) as running:
        yield running


def page_as(console: Any, username: str, path: str = "/members") -> tuple[Any, ConsoleErrors]:
    return signed_in_page(console, username, path, viewport={"width": 1400, "height": 1100})


def user(console: Any, username: str) -> tuple[User | None, list[str]]:
    """The stored user and the slugs of their tenants."""
    with Session(console.engine) as session:
        found = session.exec(select(User).where(User.username == username)).first()
        slugs = session.exec(select(Tenant.slug).join(Membership, Membership.tenant_id == Tenant.id)
                             .where(Membership.user_id == (found.id if found else -1))).all()
        return found, sorted(slugs)


def budgets(console: Any) -> dict[str, tuple]:
    """Every stored budget: name → (tenant id, VDC id, amount, currency, thresholds)."""
    with Session(console.engine) as session:
        return {b.name: (b.tenant_id, b.vdc_id, b.amount, b.currency, b.thresholds) for b in session.exec(select(Budget))}


def test_a_tenant_admin_sees_adds_deactivates_and_reactivates_members(console: Any) -> None:
    page, errors = page_as(console, "tara")
    page.wait_for_selector("#nav-members", state="attached")  # the nav is drawn after the page's own content
    assert page.locator("#nav-members").count() == 1
    page.click("#members-tenant")
    page.get_by_role("option").first.wait_for()  # the menu draws its options after the click (all_inner_texts does not wait)
    assert page.get_by_role("option").all_inner_texts() == ["tenant-a"]  # tara's tenants only
    page.keyboard.press("Escape")
    listed = page.inner_text("#members-list")
    assert "alice" in listed and "tara" in listed and "bob" not in listed and "tom" not in listed
    assert "b-spend" not in page.content()

    page.fill("#member-username", "dana")
    page.fill("#member-full-name", "Dana Scully")
    page.fill("#member-email", "dana@example.com")
    page.fill("#member-password", "a-long-enough-password-42")
    assert press(page, "#member-add", "member-add", "members-message") == "dana added to tenant-a."
    dana, tenants = user(console, "dana")
    assert dana is not None and dana.role == Role.TENANT_MEMBER.value and tenants == ["tenant-a"] and dana.is_active
    assert "Dana Scully" in page.inner_text("#members-list")
    assert page.input_value("#member-username") == page.input_value("#member-password") == ""  # the form is emptied

    for username, problem in (("Dana!", "Validation failed: username: String should match pattern"),
                              ("bob", "Conflict: a user named 'bob' already exists")):
        page.fill("#member-username", username)
        assert press(page, "#member-add", "member-add", "members-message").startswith(problem)
    assert user(console, "Dana!")[0] is None and user(console, "bob")[1] == ["tenant-b"]  # bob untouched

    assert press(page, "text=Deactivate alice", "member-active", "members-message") == "alice deactivated."
    assert not user(console, "alice")[0].is_active
    assert "deactivated" in page.inner_text("#members-list")
    assert press(page, "text=Reactivate alice", "member-active", "members-message") == "alice reactivated."
    assert user(console, "alice")[0].is_active
    assert axe_violations(page) == []
    screenshot(page, "tenant-admin-members")
    assert errors.messages == []
    page.context.close()


def test_a_tenant_admin_creates_changes_and_deletes_budgets(console: Any) -> None:
    before = budgets(console)
    page, errors = page_as(console, "tara")
    page.fill("#budget-name", "gpu spend")
    choose(page, "budget-vdc", "train")
    page.fill("#budget-amount", "-5")
    refusal = press(page, "#budget-save", "budget-save", "budget-message")
    assert refusal == "Validation failed: amount: amount '-5' must not be negative"
    assert budgets(console) == before
    page.fill("#budget-amount", "1000.25")
    page.fill("#budget-thresholds", "90, 50")
    assert press(page, "#budget-save", "budget-save", "budget-message") == "Budget gpu spend created."
    tenant_a, vdc, amount, currency, thresholds = budgets(console)["gpu spend"]
    assert (amount, currency, thresholds) == (Decimal("1000.25"), "EUR", [50, 90]) and vdc is not None
    assert "1000.25 EUR" in page.inner_text("#budgets-list") and "b-spend" not in page.inner_text("#budgets-list")
    page.wait_for_function("() => document.querySelector('#budget-amount').value === '1000.25'")
    assert page.is_disabled("#budget-currency")  # fixed once created, as in the API

    page.fill("#budget-amount", "1500")
    page.fill("#budget-thresholds", "80, 100, 120")
    assert press(page, "#budget-save", "budget-save", "budget-message") == "Budget gpu spend saved."
    assert budgets(console)["gpu spend"] == (tenant_a, vdc, Decimal(1500), "EUR", [80, 100, 120])
    assert axe_violations(page) == []  # an existing budget in the editor, its fixed fields locked
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#budget-delete")
    page.wait_for_function("() => document.querySelector('#budget-message').innerText === 'Budget deleted.'")
    assert budgets(console) == before
    assert errors.messages == []
    page.context.close()


def _ids(console: Any) -> tuple[int, int]:
    with Session(console.engine) as session:
        bob = session.exec(select(User.id).where(User.username == "bob")).one()
        spend = session.exec(select(Budget.id).where(Budget.name == "b-spend")).one()
    return bob, spend


def test_tenant_b_is_out_of_reach_through_the_page_and_crafted_callbacks(console: Any) -> None:
    bob, spend = _ids(console)
    before = budgets(console)
    page, _ = page_as(console, "tara", "/members?tenant=tenant-b")  # falls back to tara's own tenant
    assert "bob" not in page.inner_text("#members-list") and "b-spend" not in page.content()
    url = console.base_url

    shown = post_callback(page, url, "members-tenant", [{"id": "members-tenant", "property": "value", "value": "tenant-b"}], [])
    assert "Not found: no such tenant: tenant-b" in shown.text() and "bob" not in shown.text()
    member = [{"id": i, "property": "value", "value": v} for i, v in (
        ("members-tenant", "tenant-b"), ("member-username", "mallory"), ("member-full-name", ""), ("member-email", ""),
        ("member-password", ""), ("member-role", "tenant-admin"))]
    added = post_callback(page, url, "member-add", [{"id": "member-add", "property": "n_clicks", "value": 1}], member)
    assert "Not found: no such tenant: tenant-b" in added.text() and user(console, "mallory")[0] is None
    toggled = post_callback(page, url, "member-active", [[{"id": {"type": "member-active", "user": bob},
                                                            "property": "n_clicks", "value": 1}]],
                            [{"id": "members-tenant", "property": "value", "value": "tenant-a"}])
    assert f"Not found: user {bob} not found" in toggled.text() and user(console, "bob")[0].is_active

    def budget_state(tenant: str, pick: str) -> list[dict]:
        values = (("members-tenant", tenant), ("budget-pick", pick), ("budget-name", "taken"), ("budget-vdc", "__tenant__"),
                  ("budget-amount", "1"), ("budget-unit", "money"), ("budget-currency", "EUR"), ("budget-thresholds", "50"))
        return [{"id": i, "property": "value", "value": v} for i, v in values]

    save = [{"id": "budget-save", "property": "n_clicks", "value": 1}]
    assert "Not found: no such tenant: tenant-b" in post_callback(page, url, "budget-save", save,
                                                                   budget_state("tenant-b", "__new__")).text()
    assert f"Not found: budget {spend} not found" in post_callback(page, url, "budget-save", save,
                                                                    budget_state("tenant-a", str(spend))).text()
    deleted = post_callback(page, url, "budget-delete-confirm",
                            [{"id": "budget-delete-confirm", "property": "submit_n_clicks", "value": 1}],
                            [{"id": "members-tenant", "property": "value", "value": "tenant-a"},
                             {"id": "budget-pick", "property": "value", "value": str(spend)}])
    assert f"Not found: budget {spend} not found" in deleted.text()
    loaded = post_callback(page, url, "budget-pick", [{"id": "budget-pick", "property": "value", "value": str(spend)}], [],
                           [{"id": i, "property": p} for i, p in (
                               ("budget-name", "value"), ("budget-vdc", "value"), ("budget-amount", "value"),
                               ("budget-unit", "value"), ("budget-currency", "value"), ("budget-thresholds", "value"),
                               ("budget-vdc", "disabled"), ("budget-unit", "disabled"), ("budget-currency", "disabled"),
                               ("budget-delete", "disabled"))])
    assert loaded.status == 204 and "b-spend" not in loaded.text()
    assert budgets(console) == before
    page.context.close()


def test_a_tenant_member_gets_403(console: Any) -> None:
    page, _ = page_as(console, "alice", "/usage")
    assert page.locator("#nav-members").count() == 0
    assert page.goto(f"{console.base_url}/members").status == 403
    page.wait_for_selector("#forbidden-title")
    assert page.locator("#members-list").count() == 0
    page.context.close()
