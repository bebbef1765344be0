"""Settings: environment over config file over defaults; bad values and secrets are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.settings import ConfigError, load_settings, resolve_secret_key


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KILN_CONFIG", "KILN_DATA_DIR", "KILN_DATABASE_URL", "KILN_SECRET_KEY", "KILN_DEV", "KILN_MAX_BODY_BYTES"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_use_sqlite_in_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'kiln.db'}"
    assert settings.max_body_bytes == 1024 * 1024


def test_postgres_urls_use_psycopg3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_DATABASE_URL", "postgresql://kiln:pw@db:5432/kiln")
    assert load_settings().resolved_database_url == "postgresql+psycopg://kiln:pw@db:5432/kiln"


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_config_file_below_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, suffix: str) -> None:
    config = tmp_path / f"kiln{suffix}"
    sep = " =" if suffix == ".toml" else ":"
    config.write_text(f'log_level{sep} "debug"\nmax_body_bytes{sep} 4096\n')
    monkeypatch.setenv("KILN_CONFIG", str(config))
    monkeypatch.setenv("KILN_MAX_BODY_BYTES", "8192")
    settings = load_settings()
    assert settings.log_level == "DEBUG"
    assert settings.max_body_bytes == 8192


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ('log_level = "INFO"\nbogus_key = 1\n', ".toml", "line 2: unknown setting 'bogus_key'"),
        ("log_level: INFO\n\nnot_a_setting: 1\n", ".yaml", "line 3: unknown setting 'not_a_setting'"),
        ('max_body_bytes = "lots"\n', ".toml", "line 1: setting 'max_body_bytes': Input should be a valid integer"),
        ("log_level = [\n", ".toml", "not valid TOML"),
        ("- a list\n", ".yaml", "must be a mapping"),
    ],
)
def test_bad_config_files_name_key_and_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, suffix: str, message: str
) -> None:
    config = tmp_path / f"kiln{suffix}"
    config.write_text(text)
    monkeypatch.setenv("KILN_CONFIG", str(config))
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert message in str(error.value)
    assert str(config) in str(error.value)


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_MAX_BODY_BYTES", "12")
    with pytest.raises(ConfigError, match="environment KILN_MAX_BODY_BYTES: Input should be greater than or equal to 1024"):
        load_settings()


def test_secret_key_refused_outside_dev(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KILN_SECRET_KEY is not set"):
        resolve_secret_key(load_settings(data_dir=tmp_path))
    for weak in ("changeme", "short-key"):
        with pytest.raises(ConfigError, match="too weak"):
            resolve_secret_key(load_settings(data_dir=tmp_path, secret_key=weak))
    strong = "k" * 40
    assert resolve_secret_key(load_settings(data_dir=tmp_path, secret_key=strong)) == strong


def test_dev_mode_generates_and_keeps_a_private_key(tmp_path: Path) -> None:
    first = resolve_secret_key(load_settings(data_dir=tmp_path, dev=True))
    key_file = tmp_path / "secret.key"
    assert len(first) >= 32 and key_file.stat().st_mode & 0o777 == 0o600
    assert resolve_secret_key(load_settings(data_dir=tmp_path, dev=True)) == first
    assert resolve_secret_key(load_settings(data_dir=tmp_path)) == first
