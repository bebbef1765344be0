"""README.md stays true: every setting and CLI command it must document is there."""

from pathlib import Path

from kiln.settings import Settings

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [f"KILN_{name.upper()}" for name in Settings.model_fields if f"`KILN_{name.upper()}`" not in README]
    assert missing == []


def test_the_two_setup_commands_exist() -> None:
    for script in ("scripts/kiln.sh", "scripts/test.sh"):
        assert f"./{script}" in README
        assert (Path(__file__).parents[1] / script).exists()
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert "./scripts/test.sh" in ci and "KILN_REQUIRE_PEERS=1" in ci
