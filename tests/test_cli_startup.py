"""Short commands import only what they use: start-up is most of their wall time.

Guarded without timing (a shared machine makes timings noise): the real `kiln` console script
runs under `python -X importtime`, which names every module the command imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.cli.main import SUBCOMMANDS, app
from tests.cli_helpers import KILN, base_env, run
from tests.conftest import TEST_SECRET_KEY

# Heavy libraries no short command needs: the console, exports, drivers, the server, HTTP clients.
NOT_FOR_LISTS = {"pandas", "pyarrow", "numpy", "dash", "plotly", "openstack", "kubernetes", "pyipmi", "fastapi",
                 "uvicorn", "apscheduler", "httpx", "prometheus_api_client", "alembic", "yaml",
                 "opentelemetry"}  # tracing off (no KILN_OTLP_ENDPOINT): not even imported
HASHING = {"argon2", "cryptography"}  # password hashing, secrets at rest: not for listing nodes
NOT_FOR_VERSION = NOT_FOR_LISTS | HASHING | {"sqlalchemy", "sqlmodel", "pydantic", "pydantic_settings"}


# Kiln's own modules a list command must not load: its siblings' services (users and tokens
# beside tenants, leases beside VDCs, rating and usage beside bills) and the models of tables
# it never reads. A module counts with its sub-modules.
NOT_FOR_COMMAND = {
    ("nodes", "list"): {"kiln.models", "fleet.tenancy_models", "fleet.usage", "collectors", "fleet.importer",
                        "fleet.runtime", "fleet.operations", "fleet.node_history", "fleet.provisioning.base"},
    ("tenants", "list"): {"kiln.users", "kiln.tokens", "kiln.sessions", "kiln.throttle", "kiln.security", "fleet",
                          "metering"},
    ("vdcs", "list"): {"fleet.leases", "fleet.instance_leases", "fleet.nodes", "metering"},
    ("bills", "list", "--period", "2026-01"): {"metering.bills", "metering.usage", "metering.idle", "metering.budgets",
                                               "metering.exports", "metering.price_cards", "collectors.models",
                                               "kiln.partitions",
                                               # a partial index's dialect options load PostgreSQL's dialect
                                               "sqlalchemy.dialects.postgresql"},
    ("price-cards", "list"): {"metering.bills", "metering.views", "metering.usage", "metering.budgets",
                              "metering.exports", "collectors.models", "kiln.tenants"},
}


def imported_modules(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `kiln ARGS` under -X importtime; its result and every module it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", KILN, *args], env=env, capture_output=True,
                            text=True, timeout=60)
    names = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "typer" in {name.split(".")[0] for name in names}  # the listing was read at all
    return result, names


def imported_packages(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `kiln ARGS` under -X importtime; its result and the top-level packages it imported."""
    result, names = imported_modules(env, *args)
    return result, {name.split(".")[0] for name in names}


def loaded(modules: set[str], guarded: set[str]) -> list[str]:
    """The modules of `guarded` (each with its sub-modules) found in `modules`."""
    return sorted(name for name in modules if any(name == g or name.startswith(g + ".") for g in guarded))


@pytest.fixture(scope="module")
def small_db(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for a migrated SQLite database holding one tenant and two nodes."""
    tmp = tmp_path_factory.mktemp("startup")
    env = base_env(tmp, KILN_SECRET_KEY=TEST_SECRET_KEY)
    nodes = tmp / "nodes.csv"
    nodes.write_text("name,provisioner,bmc_address,bmc_username,bmc_password\n"
                     "gpu-1,fake,ipmi://10.0.0.1,admin,pw-one\ngpu-2,fake,ipmi://10.0.0.2,admin,pw-two\n")
    for args in (("migrate",), ("tenants", "create", "acme"), ("nodes", "import", str(nodes))):
        assert run(env, *args).returncode == 0, args
    return env


def test_version_imports_no_database_console_or_driver_code(tmp_path: Path) -> None:
    result, packages = imported_packages(base_env(tmp_path), "version")
    assert result.returncode == 0 and result.stdout.startswith("kiln ")
    assert sorted(packages & NOT_FOR_VERSION) == []


@pytest.mark.parametrize("command", [("nodes", "list"), ("tenants", "list"), ("vdcs", "list"), ("leases", "list"),
                                     ("bills", "list", "--period", "2026-01"), ("price-cards", "list")])
def test_list_commands_import_no_console_export_or_driver_code(small_db: dict[str, str], command: tuple[str, ...]) -> None:
    result, modules = imported_modules(small_db, *command, "-o", "json")
    assert result.returncode == 0, result.stderr[-500:]
    assert isinstance(json.loads(result.stdout), list)
    assert sorted({name.split(".")[0] for name in modules} & NOT_FOR_LISTS) == []
    assert loaded(modules, NOT_FOR_COMMAND.get(command, set())) == []


def test_nodes_list_still_lists_what_was_imported(small_db: dict[str, str]) -> None:
    result, packages = imported_packages(small_db, "nodes", "list", "-o", "json")
    assert [node["name"] for node in json.loads(result.stdout)] == ["gpu-1", "gpu-2"]
    assert "sqlalchemy" in packages  # the guard above sees the database code a list needs
    assert sorted(packages & HASHING) == []


GC_AT_EXIT = """
import atexit, gc, sys
from kiln.cli.main import main
atexit.register(lambda: sys.stderr.write(f"\\ngc {gc.isenabled()} {gc.get_freeze_count()}\\n"))
sys.argv = ["kiln", *sys.argv[1:]]
main()
"""


def test_start_up_objects_are_frozen_and_the_collector_is_back_on_for_the_command(small_db: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-c", GC_AT_EXIT, "nodes", "list", "-o", "json"], env=small_db,
                            capture_output=True, text=True, timeout=60)
    assert [node["name"] for node in json.loads(result.stdout)] == ["gpu-1", "gpu-2"]
    _, enabled, frozen = result.stderr.strip().splitlines()[-1].split()
    assert enabled == "True" and int(frozen) > 20_000  # the command's modules, frozen once loaded


def test_every_subcommand_loads_and_help_lists_each_once() -> None:
    import typer

    root = typer.main.get_command(app)
    assert list(root.commands) == list(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        assert root.commands[name].name == name
    listed = subprocess.run([KILN, "--help"], capture_output=True, text=True, timeout=60,
                            env={**base_env(Path("/nonexistent")), "COLUMNS": "200"}).stdout
    assert all(f" {name} " in listed for name in SUBCOMMANDS)


def test_an_unknown_command_is_one_line_without_importing_every_command(tmp_path: Path) -> None:
    result, packages = imported_packages(base_env(tmp_path), "nodez")
    assert result.returncode == 2
    assert "No such command 'nodez'" in result.stderr and "nodes" in result.stderr
    assert "sqlalchemy" not in packages
