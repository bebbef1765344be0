"""Unknown `KILN_*` environment variables: a warning at start-up naming the variable and the
closest setting (never an error: the test and CI tooling has `KILN_*` knobs of its own)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from kiln import settings
from tests.cli_helpers import base_env, run

REPO = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: nothing warned about yet."""
    monkeypatch.setattr(settings, "_warned_variables", set())


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Messages kiln.settings logged at WARNING."""
    return [r.getMessage() for r in caplog.records if r.name == "kiln.settings" and r.levelno == logging.WARNING]


def test_a_misspelt_variable_is_named_with_the_closest_setting(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"KILN_LOG_LEVL": "hunter2-value", "KILN_SYNC_INTERVAL": "30", "PATH": "/usr/bin"}
    with caplog.at_level(logging.WARNING, logger="kiln.settings"):
        settings.warn_unknown_environment(environ)
    assert warnings_logged(caplog) == [
        "environment variable KILN_LOG_LEVL is not a Kiln setting and is ignored (did you mean KILN_LOG_LEVEL?)"]
    assert "hunter2" not in caplog.text  # values may be secrets


def test_a_name_like_no_setting_gets_no_suggestion(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kiln.settings"):
        settings.warn_unknown_environment({"KILN_BANANA": "1"})
    assert warnings_logged(caplog) == ["environment variable KILN_BANANA is not a Kiln setting and is ignored"]


def test_each_variable_is_warned_about_once_per_process(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kiln.settings"):
        settings.warn_unknown_environment({"KILN_IPMI_WORKER": "8"})
        settings.warn_unknown_environment({"KILN_IPMI_WORKER": "8", "KILN_GPU_INTERVALS": "60"})
    assert warnings_logged(caplog) == [
        "environment variable KILN_IPMI_WORKER is not a Kiln setting and is ignored (did you mean KILN_IPMI_WORKERS?)",
        "environment variable KILN_GPU_INTERVALS is not a Kiln setting and is ignored (did you mean KILN_GPU_INTERVAL?)",
    ]


def test_settings_and_tooling_variables_are_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    environ = {f"KILN_{name.upper()}": "x" for name in settings.Settings.model_fields}
    environ |= dict.fromkeys(settings.NON_SETTING_VARIABLES, "1")
    assert settings.unknown_environment_variables(environ) == {}
    assert settings.unknown_environment_variables({"NOT_KILN_LOG_LEVL": "1", "kiln_log_levl": "1"}) == {}


def test_the_allow_list_covers_every_variable_the_tooling_reads() -> None:
    """Every `KILN_*` override read by scripts, CI and the peers is a setting or allow-listed
    (so CI's own variables never produce a warning), and the list holds nothing stale."""
    pattern = re.compile(r'\$\{(KILN_[A-Z0-9_]+):-|environ(?:\.get)?[(\[]"(KILN_[A-Z0-9_]+)|export [^;\n]*?(KILN_[A-Z0-9_]+)=')
    read = set()
    for path in [REPO / ".ci" / "run", *REPO.glob("scripts/*.sh"), *REPO.glob("tests/**/*.sh"),
                 *REPO.glob("tests/**/*.py")]:
        read |= {name for match in pattern.findall(path.read_text()) for name in match if name}
    settings_variables = {f"KILN_{name.upper()}" for name in settings.Settings.model_fields}
    assert read - settings_variables - settings.NON_SETTING_VARIABLES == set()
    assert {"KILN_REQUIRE_PEERS", "KILN_TEST_WORKERS"} <= read
    assert settings.NON_SETTING_VARIABLES - read == {settings.CONFIG_ENV}  # Kiln's own, read in kiln/


def test_the_cli_warns_on_stderr_and_still_runs(tmp_path: Path) -> None:
    result = run(base_env(tmp_path, KILN_SYNC_INTERVALL="30", KILN_REQUIRE_PEERS="1"), "migrate")
    assert result.returncode == 0, result.stderr
    assert "database schema at" in result.stdout
    assert ("environment variable KILN_SYNC_INTERVALL is not a Kiln setting and is ignored "
            "(did you mean KILN_SYNC_INTERVAL?)") in result.stderr
    assert "KILN_REQUIRE_PEERS" not in result.stderr
