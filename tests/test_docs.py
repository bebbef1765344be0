"""README.md stays true: every setting and CLI command it must document is there."""

import re
from pathlib import Path

import typer

from kiln.cli.main import app
from kiln.settings import NON_SETTING_VARIABLES, Settings

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
    assert "python3 .ci/readme_demo.py" in ci  # and README's first command, from a fresh clone


def test_ci_takes_readmes_first_command_as_written() -> None:
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("readme_demo", Path(__file__).parents[1] / ".ci" / "readme_demo.py")
    readme_demo = module_from_spec(spec)
    spec.loader.exec_module(readme_demo)
    assert readme_demo.first_command(README) == "./scripts/kiln.sh demo"
    assert readme_demo.first_command("## Quick start\n\n```sh\n./x.sh serve   # comment\n./y\n```\n") == "./x.sh serve"


def _code(text: str) -> list[str]:
    """README's code: fenced blocks and inline code spans."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    prose = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    return blocks + re.findall(r"`([^`\n]+)`", prose)


def test_every_kiln_variable_named_in_readme_exists() -> None:
    named = set(re.findall(r"\bKILN_[A-Z0-9_]+\b", README))
    known = {f"KILN_{name.upper()}" for name in Settings.model_fields} | NON_SETTING_VARIABLES
    misspelt_on_purpose = {"KILN_LOG_LEVL"}  # README's example of the unknown-variable warning
    assert sorted(named - known - misspelt_on_purpose) == []


def test_every_cli_command_named_in_readme_exists() -> None:
    root = typer.main.get_command(app)
    named = {match.group(1) for snippet in _code(README)
             for match in re.finditer(r"(?:^|[\s/(])kiln(?:\.sh)? ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", snippet)
             if not re.search(r"helm (?:install|upgrade|uninstall)\s*$", snippet[:match.start() + 1])}  # a release name
    assert len(named) > 30  # the parser sees README's commands at all
    unknown = []
    for words in sorted(named):
        first, *rest = words.split()
        command = root.commands.get(first)
        if command is None:
            unknown.append(words)
        elif hasattr(command, "commands") and rest and rest[0] not in command.commands:
            unknown.append(words)  # a group's second word must be one of its commands
    assert unknown == []
