"""`kiln doctor` against real peers: Prometheus, Ironic, kube-apiserver, the BMC simulator, the
OpenCost and OIDC fixture servers; unreachable ones on ports where nothing listens."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from kiln.doctor import STATUS_FAILED, STATUS_OK, STATUS_UNCONFIGURED, Check, run_checks
from kiln.security import SecretBox
from kiln.settings import Settings
from tests.cli_helpers import base_env, run
from tests.conftest import TEST_SECRET_KEY
from tests.factories import World
from tests.fleet_helpers import make_node_row
from tests.opencost_fixture import OpenCostFixture, opencost_server
from tests.peers.harness import running_peer
from tests.test_oidc import Issuer


def closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Peers:
    """URLs of the running peers."""

    prometheus: str
    ironic: str
    kubeconfig: str
    opencost: OpenCostFixture
    issuer: Issuer
    bmcs: list[dict]


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    """Every peer doctor checks, started once for the module."""
    kube_state = tmp_path_factory.mktemp("kube")
    bmc_state = tmp_path_factory.mktemp("bmcsim")
    with (running_peer("prometheus", tmp_path_factory.mktemp("prometheus")) as prometheus,
          running_peer("ironic", tmp_path_factory.mktemp("ironic")) as ironic,
          running_peer("kube", kube_state),
          running_peer("bmcsim", bmc_state, "2"),
          opencost_server() as opencost):
        opencost.serve_file("namespaces_1h.json")
        issuer = Issuer()
        try:
            yield Peers(prometheus, ironic, str(kube_state / "kubeconfig"), opencost, issuer,
                        json.loads((bmc_state / "bmcs.json").read_text())["bmcs"])
        finally:
            issuer.server.shutdown()


@pytest.fixture
def fleet(engine: Engine, world: World, peers: Peers) -> World:
    """Two nodes whose BMCs are the simulator's (passwords encrypted with the test key)."""
    box = SecretBox(TEST_SECRET_KEY)
    for bmc in peers.bmcs:
        make_node_row(world, gpus=0, name=f"node-{bmc['name']}", bmc_address=f"ipmi://{bmc['host']}:{bmc['port']}",
                      bmc_username=bmc["username"], bmc_password_encrypted=box.encrypt(bmc["password"]))
    return world


def configured(settings: Settings, peers: Peers) -> Settings:
    """Settings naming every peer."""
    return settings.model_copy(update={
        "prometheus_url": peers.prometheus, "ironic_url": peers.ironic, "kubeconfig": peers.kubeconfig,
        "opencost_url": peers.opencost.url, "oidc_issuer": peers.issuer.url})


def by_peer(checks: list[Check]) -> dict[str, list[Check]]:
    """Checks grouped by peer."""
    grouped: dict[str, list[Check]] = {}
    for check in checks:
        grouped.setdefault(check.peer, []).append(check)
    return grouped


def test_every_configured_peer_answers(settings: Settings, fleet: World, peers: Peers) -> None:
    checks = by_peer(run_checks(configured(settings, peers)))
    assert list(checks) == ["database", "prometheus", "ironic", "kubernetes", "opencost", "oidc", "retention", "utilisation",
                            "bmc"]
    failing = [c for group in checks.values() for c in group if c.status != STATUS_OK]
    assert [(c.peer, c.status) for c in failing] == [("utilisation", STATUS_UNCONFIGURED)]  # no GPU samples in this fleet
    assert "schema" in checks["database"][0].detail and "(current)" in checks["database"][0].detail
    assert checks["ironic"][0].detail.startswith("Ironic API 1.")
    assert checks["kubernetes"][0].detail == "Kubernetes v1.20.2"
    assert checks["opencost"][0].detail.startswith("allocation API answers (")
    assert [c.target for c in checks["bmc"]] == sorted(f"node-{b['name']}" for b in peers.bmcs)


def test_unreachable_peers_fail_and_say_why(settings: Settings, fleet: World, peers: Peers) -> None:
    dead = closed_port()
    make_node_row(fleet, gpus=0, name="node-dead", bmc_address=f"ipmi://127.0.0.1:{closed_port()}",
                  bmc_username="admin", bmc_password_encrypted=SecretBox(TEST_SECRET_KEY).encrypt("x" * 12))
    broken = configured(settings, peers).model_copy(update={
        "prometheus_url": f"http://127.0.0.1:{dead}", "oidc_issuer": peers.issuer.url + "-other"})
    checks = by_peer(run_checks(broken, timeout=2))
    assert checks["prometheus"][0].status == STATUS_FAILED
    assert "unreachable" in checks["prometheus"][0].detail
    assert checks["oidc"][0].status == STATUS_FAILED
    assert checks["oidc"][0].detail.startswith(f"the discovery document names issuer '{peers.issuer.url}'")
    bmc = {c.target: c for c in checks["bmc"]}
    assert bmc["node-dead"].status == STATUS_FAILED
    assert bmc["node-dead"].detail  # the collector's reason (refused or no response)
    assert {c.status for t, c in bmc.items() if t != "node-dead"} == {STATUS_OK}
    assert checks["ironic"][0].status == checks["kubernetes"][0].status == STATUS_OK


def test_a_bmc_with_a_wrong_password_fails(settings: Settings, engine: Engine, world: World, peers: Peers) -> None:
    bmc = peers.bmcs[0]
    make_node_row(world, gpus=0, name="node-wrong-pw", bmc_address=f"ipmi://{bmc['host']}:{bmc['port']}",
                  bmc_username=bmc["username"], bmc_password_encrypted=SecretBox(TEST_SECRET_KEY).encrypt("not-it-123"))
    (check,) = by_peer(run_checks(settings))["bmc"]
    assert check.status == STATUS_FAILED and "authentication failed" in check.detail


def test_unconfigured_peers_do_not_fail(settings: Settings, engine: Engine) -> None:
    checks = run_checks(settings)
    assert [(c.peer, c.status) for c in checks] == [
        ("database", STATUS_OK), ("prometheus", STATUS_UNCONFIGURED), ("ironic", STATUS_UNCONFIGURED),
        ("kubernetes", STATUS_UNCONFIGURED), ("opencost", STATUS_UNCONFIGURED), ("oidc", STATUS_UNCONFIGURED),
        ("retention", STATUS_OK), ("retention", STATUS_OK), ("retention", STATUS_OK), ("retention", STATUS_OK), ("retention", STATUS_OK),
        ("utilisation", STATUS_UNCONFIGURED), ("bmc", STATUS_UNCONFIGURED)]


def test_an_unmigrated_database_fails(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'empty.db'}", secret_key=TEST_SECRET_KEY)
    checks = run_checks(settings)
    assert (checks[0].peer, checks[0].status) == ("database", STATUS_FAILED)
    assert "run `kiln migrate`" in checks[0].detail
    assert (checks[-1].peer, checks[-1].status) == ("bmc", STATUS_FAILED)


def test_cli_json_output_and_exit_status(settings: Settings, fleet: World, peers: Peers, tmp_path: Path) -> None:
    env = base_env(tmp_path, KILN_DATABASE_URL=settings.database_url or "", KILN_SECRET_KEY=TEST_SECRET_KEY,
                   KILN_PROMETHEUS_URL=peers.prometheus, KILN_OPENCOST_URL=peers.opencost.url)
    healthy = run(env, "doctor", "--output", "json")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    rows = json.loads(healthy.stdout)
    assert all(set(row) == {"peer", "target", "status", "detail", "seconds"} for row in rows)
    assert {(r["peer"], r["status"]) for r in rows} >= {("prometheus", "ok"), ("opencost", "ok"),
                                                        ("ironic", "not configured"), ("bmc", "ok")}
    assert all(isinstance(r["seconds"], float | int) and r["seconds"] >= 0 for r in rows)
    assert TEST_SECRET_KEY not in healthy.stdout and peers.bmcs[0]["password"] not in healthy.stdout

    env["KILN_PROMETHEUS_URL"] = f"http://127.0.0.1:{closed_port()}"
    table = run(env, "doctor")
    assert table.returncode == 1
    assert "prometheus" in table.stdout and "failed" in table.stdout and "unreachable" in table.stdout
    assert "not configured" in table.stdout


def test_an_unreachable_database_fails_the_cli(tmp_path: Path) -> None:
    env = base_env(tmp_path, KILN_DATABASE_URL=f"postgresql://kiln:pw@127.0.0.1:{closed_port()}/kiln",
                   KILN_SECRET_KEY=TEST_SECRET_KEY)
    result = run(env, "doctor", "--output", "json")
    assert result.returncode == 1
    rows = {r["peer"]: r for r in json.loads(result.stdout)}
    assert rows["database"]["status"] == "failed" and "cannot connect" in rows["database"]["detail"]
    assert "pw@" not in result.stdout  # the password is masked
    assert rows["bmc"]["detail"] == "skipped: the database is unusable"


def test_check_shape() -> None:
    check = replace(Check("x", "t", STATUS_OK, "fine"), seconds=0.12345)
    assert check.as_dict() == {"peer": "x", "target": "t", "status": "ok", "detail": "fine", "seconds": 0.123}
