"""Fixtures for tests against a real Ironic, the BMC simulator and sushy-static, shared by test modules.

Import them into a test module (`from tests.peer_fixtures import bmcs, ironic_url, sdk`);
each importing module gets its own Ironic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import openstack.connection
import openstack.exceptions
import pytest

from collectors.base import TargetResult
from collectors.redfish import RedfishCollector, RedfishTarget
from tests.peers.harness import running_peer

REDFISH_MOCKUP = Path(__file__).parent / "data" / "upstream" / "redfish" / "public-rackmount1"
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
