"""The account page in Chromium: a user sees their console sessions and API tokens and ends
them; an infra admin ending everything of the user signs every browser of theirs out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from fleet.provisioning.fake import FakeDriver
from kiln.auth import Principal
from kiln.models import User
from kiln.roles import Role
from kiln.tokens import issue_token
from kiln.users import UserCreate, create_user
from tests.browser import PASSWORD, ConsoleErrors, RunningConsole, running_console, sign_in
from tests.factories import World


def seed(session: Any, engine: Any, settings: Any) -> str:
    """Tenants, alice (tenant member) with a read token, and an infra admin; returns the admin's token."""
    World.build(session)
    system = Principal.system("test")
    alice = create_user(session, system, UserCreate(username="alice", role=Role.TENANT_MEMBER, tenants=["tenant-a"],
                                                    password=PASSWORD))
    issue_token(session, system, alice, name="usage export", days=30, scope="read")
    admin = create_user(session, system, UserCreate(username="ops-admin", role=Role.INFRA_ADMIN, password=PASSWORD))
    token = issue_token(session, system, admin, name="ops", days=1).token
    session.commit()
    return token


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("account"), FakeDriver(), seed) as running:
        yield running


def signed_in(console: RunningConsole, agent: str) -> tuple[Any, ConsoleErrors]:
    page = console.browser.new_context(user_agent=agent).new_page()
    errors = ConsoleErrors(page)
    sign_in(page, console.base_url, "alice", PASSWORD, "/account")
    page.wait_for_url(f"{console.base_url}/account")
    return page, errors


def test_sessions_and_tokens_are_listed_and_ended(console: RunningConsole) -> None:
    laptop, laptop_errors = signed_in(console, "Mozilla/5.0 (X11; Linux x86_64) KilnTest/laptop")
    phone, _ = signed_in(console, "Mozilla/5.0 (iPhone) KilnTest/phone")
    laptop.reload()
    laptop.wait_for_selector("#account-sessions table")
    rows = laptop.locator("#account-sessions tbody tr")
    assert rows.count() == 2
    texts = [rows.nth(i).inner_text() for i in range(2)]
    assert sum("this browser" in t for t in texts) == 1 and any("KilnTest/phone" in t for t in texts)
    phone_row = rows.filter(has_text="KilnTest/phone")
    phone_row.locator("button").click()
    laptop.wait_for_selector("#account-notice:has-text('Session ended.')")
    assert laptop.locator("#account-sessions tbody tr").count() == 1
    phone.goto(f"{console.base_url}/usage")
    phone.wait_for_url("**/signin?reason=signedout**")
    # the read token made for exports: listed with its scope, then revoked
    tokens = laptop.locator("#account-tokens tbody tr")
    assert tokens.count() == 1 and "usage export" in tokens.first.inner_text() and "read" in tokens.first.inner_text()
    tokens.first.locator("button").click()
    laptop.wait_for_selector("#account-notice:has-text('Token revoked.')")
    laptop.wait_for_selector("#account-tokens:has-text('No API tokens')")
    assert laptop_errors.messages == []


def test_an_admin_ending_everything_signs_every_browser_out(console: RunningConsole) -> None:
    page, _ = signed_in(console, "Mozilla/5.0 KilnTest/desk")
    with Session(console.engine) as session:
        alice_id = session.exec(select(User.id).where(User.username == "alice")).one()
    ended = httpx.post(f"{console.base_url}/api/v1/users/{alice_id}/end-sessions",
                       headers={"Authorization": f"Bearer {console.seeded}"})
    assert ended.status_code == 200 and ended.json()["console_sessions"] >= 1
    page.goto(f"{console.base_url}/usage")
    page.wait_for_url("**/signin?reason=ended**")
    assert "An administrator ended this session." in page.inner_text("#signin-notice")


def test_the_sign_in_form_says_how_long_to_wait_after_failures(console: RunningConsole) -> None:
    """Last in this module: its failures count against the loopback address for a while."""
    page = console.browser.new_context().new_page()
    for _ in range(3):
        sign_in(page, console.base_url, "nobody-here", "wrong password!")
        page.wait_for_selector("#signin-notice:has-text('Wrong username or password.')")
    sign_in(page, console.base_url, "nobody-here", "wrong password!")  # within the second the third failure asks for
    page.wait_for_selector("#signin-notice:has-text('Too many failed sign-ins. Try again in 1 seconds.')")
