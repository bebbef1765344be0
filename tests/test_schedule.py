"""The test modules' order for the workers (tests/schedule.py): longest first, each module's tests in their order."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests.schedule import MODULE_SECONDS, longest_first

TESTS = Path(__file__).resolve().parent


def test_every_module_the_schedule_names_exists() -> None:
    # a renamed or deleted module would silently lose its place at the front
    missing = [name for name in MODULE_SECONDS if not (TESTS / f"{name}.py").is_file()]
    assert missing == []


def test_longest_modules_first_and_each_modules_tests_in_their_order() -> None:
    longest, second = sorted(MODULE_SECONDS, key=MODULE_SECONDS.get, reverse=True)[:2]
    names = [("test_unlisted_a", 1), (second, 1), ("test_unlisted_b", 1), (longest, 1), (second, 2), ("test_unlisted_a", 2)]
    items = [SimpleNamespace(path=TESTS / f"{module}.py", test=n) for module, n in names]
    longest_first(items)  # type: ignore[arg-type]
    assert [(item.path.stem, item.test) for item in items] == [
        (longest, 1), (second, 1), (second, 2), ("test_unlisted_a", 1), ("test_unlisted_b", 1), ("test_unlisted_a", 2)]
