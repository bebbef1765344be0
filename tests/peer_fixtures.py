"""Fixtures for tests against a real Ironic, the IPMI BMC simulator and sushy-tools' Redfish
emulator, shared by test modules.

Import them into a test module (`from tests.peer_fixtures import bmcs, ironic_url, sdk`);
each importing module gets its own Ironic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

import openstack.connection
import openstack.exceptions
import pytest

from collectors.base import TargetResult
from collectors.redfish import RedfishCollector, RedfishTarget
from tests.peers.harness import running_peer

REDFISH_MOCKUP = Path(__file__).parent / "data" / "upstream" / "redfish" / "public-rackmount1"
TOWER = Path(__file__).parent / "data" / "upstream" / "redfish" / "public-tower"  # the newer shapes, GPUs, a log
TOWER_SYSTEM = "/redfish/v1/Systems/437XR1238R2"
# Provision states in which Ironic deletes a node that is not in maintenance.
DELETABLE_STATES = frozenset({"enroll", "manageable", "available", "adopt failed"})


@pytest.fixture(scope="module")
def ironic_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a fresh real Ironic (noauth, fake-hardware + ipmi) for this module."""
    with running_peer("ironic", tmp_path_factory.mktemp("ironic")) as url:
        yield url


@pytest.fixture(scope="module")
def redfish_mockup_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of sushy-tools' sushy-static serving DMTF's public-rackmount1 mockup (REDFISH_MOCKUP)."""
    with running_peer("redfish", tmp_path_factory.mktemp("redfish"), str(REDFISH_MOCKUP)) as url:
        yield url


def tower(path: str) -> dict:
    """A public-tower resource as the mockup file holds it."""
    return json.loads((TOWER / path.removeprefix("/redfish/v1").strip("/") / "index.json").read_text())


def tower_log_gap(url: str) -> str:
    """The part error every poll of public-tower notes: its log's Entries collection names a next
    page (`@odata.nextLink` `...Entries?$skiptoken=2`) that the mockup does not hold, so the BMC
    at `url` answers it 404 (the entries of the first page are still read)."""
    next_page = tower(f"{TOWER_SYSTEM}/LogServices/Log1/Entries")["@odata.nextLink"]
    return f"log: the BMC has no {url}{next_page} (HTTP 404)"


@pytest.fixture(scope="module")
def tower_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of sushy-static serving DMTF's public-tower mockup (TOWER)."""
    with running_peer("redfish", tmp_path_factory.mktemp("tower"), str(TOWER)) as url:
        yield url


def poll_mockup(url: str, node: str, at: datetime) -> TargetResult:
    """What the Redfish collector reads from the mockup at `url` as node `node`, stamped `at`."""
    with RedfishCollector([RedfishTarget(node, url)], clock=lambda: at) as collector:
        [result] = collector.collect()
    return result


@pytest.fixture(scope="module")
def sdk(ironic_url: str) -> openstack.connection.Connection:
    """A plain openstacksdk connection, to check (or change) what Kiln sees in Ironic."""
    return openstack.connection.Connection(
        auth_type="none", baremetal_endpoint_override=ironic_url, baremetal_status_code_retries=0
    )


@pytest.fixture(scope="module")
def bmcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    """Four simulated IPMI BMCs; their bmcs.json entries."""
    state = tmp_path_factory.mktemp("bmcsim")
    with running_peer("bmcsim", state, "4"):
        yield json.loads((state / "bmcs.json").read_text())["bmcs"]


@dataclass(frozen=True)
class RedfishEmulator:
    """A running sushy-emulator (fake driver): its URL, basic-auth user, systems' UUIDs and,
    when it serves HTTPS, its self-signed certificate."""

    url: str
    username: str
    password: str = field(repr=False)
    systems: tuple[str, ...]
    certificate: Path | None = None

    def system_path(self, index: int = 0) -> str:
        """The Redfish path of system `index` (`/redfish/v1/Systems/UUID`)."""
        return f"/redfish/v1/Systems/{self.systems[index]}"

    def address(self, index: int | None = 0) -> str:
        """Kiln's BMC address of system `index`, or of the BMC alone when None (`redfish+http(s)://…`)."""
        return f"redfish+{self.url}" + (self.system_path(index) if index is not None else "")

    def power_state(self, index: int = 0) -> str:
        """The system's `PowerState` as the emulator itself reports it (On, Off)."""
        answer = httpx.get(self.url + self.system_path(index), auth=(self.username, self.password), timeout=10,
                           verify=str(self.certificate) if self.certificate else True)
        answer.raise_for_status()
        return answer.json()["PowerState"]


@contextmanager
def running_emulator(state_dir: Path, systems: int, scheme: str = "http") -> Iterator[RedfishEmulator]:
    """sushy-emulator with `systems` fake ComputerSystems (tests/peers/redfish.sh start-emulator),
    over HTTPS with a self-signed certificate when `scheme` is https."""
    with running_peer("redfish", state_dir, str(systems), scheme, command="start-emulator") as url:
        described = json.loads((state_dir / "emulator.json").read_text())
        yield RedfishEmulator(url, described["username"], described["password"],
                              tuple(s["uuid"] for s in described["systems"]),
                              state_dir / "cert.pem" if scheme == "https" else None)


@pytest.fixture(scope="module")
def redfish_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedfishEmulator]:
    """A Redfish BMC emulator managing two systems, both powered off at first."""
    with running_emulator(tmp_path_factory.mktemp("redfish-emulator"), 2) as emulator:
        yield emulator


def delete_all_nodes(sdk: openstack.connection.Connection, timeout: float = 20) -> None:
    """Delete every node in Ironic (deployed ones through maintenance), waiting out busy ones."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(sdk.baremetal.nodes(fields=["uuid", "name", "provision_state", "maintenance", "reservation"]))
        if not nodes:
            return
        for node in nodes:
            try:
                if node.provision_state not in DELETABLE_STATES and not node.is_maintenance:
                    sdk.baremetal.set_node_maintenance(node.id, reason="test clean-up")
                sdk.baremetal.delete_node(node.id, ignore_missing=True)
            except openstack.exceptions.HttpException:
                pass  # locked or still working: try again below
        if time.monotonic() > deadline:
            pytest.fail(f"Ironic nodes left after {timeout} s: {[(n.name, n.provision_state) for n in nodes]}")
        time.sleep(0.2)
