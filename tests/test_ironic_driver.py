"""IronicDriver against a real standalone Ironic 39 (tests/peers/ironic.sh) and, for power,
real IPMI to Kiln's BMC simulator (tests/peers/bmcsim.sh)."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from fleet.provisioning.actions import is_settled
from fleet.provisioning.base import BackendNode, DriverError, Image, NodeTarget
from fleet.provisioning.states import PowerState, ProvisionState

from tests.flaky_proxy import flaky_proxy
from tests.peer_fixtures import bmcs, ironic_url, sdk  # noqa: E402, F401 (fixtures)
import openstack.connection
from fleet.provisioning.ironic import IronicDriver, _backend_node, ironic_node_attributes  # noqa: E402

pytestmark = [
    # openstacksdk's own internals warn about its future removals; nothing Kiln calls.
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning"),
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK60Warning"),
]

S = ProvisionState
SHA256 = "sha256:" + "5" * 64
MD5 = "d41d8cd98f00b204e9800998ecf8427e"


@pytest.fixture(scope="module")
def driver(ironic_url: str) -> IronicDriver:
    return IronicDriver(ironic_url)


def fake_node(name: str, **changes) -> NodeTarget:
    """A fake-hardware node with fake power: its BMC host is under .invalid (no BMC behind it)."""
    base = NodeTarget(
        name=name, external_id=None, bmc_driver="ipmi", bmc_address="ipmi://bmc-10.test.invalid",
        bmc_username="admin", bmc_password="secret", hardware_type="fake-hardware",
    )
    return dataclasses.replace(base, **changes)


def enrolled(driver: IronicDriver, node: NodeTarget) -> NodeTarget:
    """Enroll `node` and return it with its Ironic UUID as external_id."""
    return dataclasses.replace(node, external_id=driver.enroll(node).external_id)


def wait_for(driver: IronicDriver, node: NodeTarget, predicate: Callable[[BackendNode], bool],
             timeout: float = 15, interval: float = 0.05) -> BackendNode:
    """Poll `driver.get` every `interval` s until `predicate` holds; fail with the last state."""
    deadline = time.monotonic() + timeout
    while True:
        current = driver.get(node)
        if predicate(current):
            return current
        if time.monotonic() > deadline:
            pytest.fail(f"{node.name} did not get there within {timeout} s; last: {current}")
        time.sleep(interval)


def settled(current: BackendNode) -> bool:
    return is_settled(current.provision_state, current.target_provision_state)


def act(driver: IronicDriver, node: NodeTarget, verb: str, image: Image | None = None, **waiting: float) -> BackendNode:
    """Start `verb` and wait until Ironic has finished with the node (`waiting`: wait_for's timeout, interval)."""
    driver.set_provision_state(node, verb, image)
    return wait_for(driver, node, settled, **waiting)


def test_full_lifecycle(driver: IronicDriver, sdk: openstack.connection.Connection) -> None:
    node = fake_node("kiln-life", boot_mac="52:54:00:12:34:56", resource_class="gpu-h100",
                     properties={"ipmi_privilege": "admin", "cpus": 64, "gpus": 8})
    first = driver.enroll(node)
    assert first.provision_state is S.ENROLL and first.power_state is None and not first.maintenance
    node = dataclasses.replace(node, external_id=first.external_id)

    raw = sdk.baremetal.get_node(node.external_id)
    assert (raw.name, raw.driver, raw.resource_class) == ("kiln-life", "fake-hardware", "gpu-h100")
    assert raw.properties == {"cpus": 64, "gpus": 8}  # Kiln-private keys stay in Kiln
    assert raw.power_interface == "fake"
    assert [p.address for p in sdk.baremetal.ports(node_uuid=node.external_id)] == ["52:54:00:12:34:56"]
    assert node.external_id in {n.external_id for n in driver.list_all()}

    assert act(driver, node, "manage").provision_state is S.MANAGEABLE
    assert act(driver, node, "inspect").provision_state is S.MANAGEABLE
    assert act(driver, node, "provide").provision_state is S.AVAILABLE  # through automated cleaning

    deployed = act(driver, node, "active", Image("http://images.example/ubuntu.qcow2", SHA256,
                                                 config_drive='{"meta_data": {"hostname": "kiln-life"}}'))
    assert deployed.provision_state is S.ACTIVE and deployed.last_error is None
    info = sdk.baremetal.get_node(node.external_id).instance_info
    assert info["image_source"] == "http://images.example/ubuntu.qcow2"
    assert (info["image_os_hash_algo"], info["image_os_hash_value"]) == ("sha256", "5" * 64)

    with pytest.raises(DriverError) as refused:
        driver.remove(node)
    assert refused.value.status == 409
    assert 'node "kiln-life"' in str(refused.value) and "active" in str(refused.value)
    assert node.external_id not in str(refused.value)

    assert act(driver, node, "rebuild", Image("http://images.example/rocky.qcow2", MD5)).provision_state is S.ACTIVE
    info = sdk.baremetal.get_node(node.external_id).instance_info
    assert info["image_source"] == "http://images.example/rocky.qcow2" and info["image_checksum"] == MD5
    assert "image_os_hash_value" not in info  # the previous image's checksum is gone

    assert act(driver, node, "deleted").provision_state is S.AVAILABLE
    driver.remove(node)
    with pytest.raises(DriverError) as gone:
        driver.get(node)
    assert gone.value.status == 404 and "kiln-life" in str(gone.value)
    driver.remove(node)  # already gone is fine
    assert node.external_id not in {n.external_id for n in driver.list_all()}


def test_get_by_name_before_external_id_is_known(driver: IronicDriver) -> None:
    node = enrolled(driver, fake_node("kiln-byname"))
    by_name = driver.get(dataclasses.replace(node, external_id=None))
    assert by_name.external_id == node.external_id and by_name.provision_state is S.ENROLL
    driver.remove(node)


def test_maintenance_round_trip(driver: IronicDriver) -> None:
    node = enrolled(driver, fake_node("kiln-maint"))
    driver.set_maintenance(node, True, "replacing GPU 3")
    on = driver.get(node)
    assert (on.maintenance, on.maintenance_reason) == (True, "replacing GPU 3")
    listed = {n.external_id: n for n in driver.list_all()}[node.external_id]
    assert (listed.maintenance, listed.maintenance_reason) == (True, "replacing GPU 3")
    driver.set_maintenance(node, False)
    off = driver.get(node)
    assert (off.maintenance, off.maintenance_reason) == (False, None)
    driver.remove(node)


def test_illegal_action_is_400_naming_the_node(driver: IronicDriver) -> None:
    node = enrolled(driver, fake_node("kiln-illegal"))
    with pytest.raises(DriverError) as refused:
        driver.set_provision_state(node, "active", Image("http://images.example/x.qcow2", SHA256))
    assert refused.value.status == 400
    assert str(refused.value) == (
        'The requested action "active" can not be performed on node "kiln-illegal" while it is in state "enroll".'
    )
    assert driver.get(node).provision_state is S.ENROLL
    driver.remove(node)


def test_duplicate_name_is_409_and_creates_nothing(driver: IronicDriver) -> None:
    node = enrolled(driver, fake_node("kiln-dup"))
    before = driver.list_all()
    with pytest.raises(DriverError) as conflict:
        driver.enroll(fake_node("kiln-dup"))
    assert conflict.value.status == 409 and str(conflict.value) == "A node with name kiln-dup already exists."
    assert len(driver.list_all()) == len(before)
    driver.remove(node)


def test_unknown_hardware_type_is_400_and_leaves_no_node(driver: IronicDriver) -> None:
    before = driver.list_all()
    with pytest.raises(DriverError) as refused:
        driver.enroll(fake_node("kiln-nope", hardware_type="nope"))
    assert refused.value.status == 400
    assert str(refused.value).startswith("No valid host was found.") and "driver nope" in str(refused.value)
    assert len(driver.list_all()) == len(before)


def test_failed_port_removes_the_new_node(driver: IronicDriver) -> None:
    first = enrolled(driver, fake_node("kiln-mac1", boot_mac="52:54:00:00:00:aa"))
    before = driver.list_all()
    with pytest.raises(DriverError) as conflict:
        driver.enroll(fake_node("kiln-mac2", boot_mac="52:54:00:00:00:aa"))
    assert conflict.value.status == 409 and "52:54:00:00:00:aa already exists" in str(conflict.value)
    assert {n.external_id for n in driver.list_all()} == {n.external_id for n in before}
    with pytest.raises(DriverError) as gone:
        driver.get(fake_node("kiln-mac2"))
    assert gone.value.status == 404
    driver.remove(first)


def test_unreachable_ironic_is_502_quickly() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    driver = IronicDriver(url, timeout=5)
    started = time.monotonic()
    for call in (driver.list_all, lambda: driver.get(fake_node("kiln-x", external_id="x"))):
        with pytest.raises(DriverError) as unreachable:
            call()
        assert unreachable.value.status == 502
        assert str(unreachable.value).startswith(f"Ironic at {url} is unreachable: ")
    assert time.monotonic() - started < 5


def test_broken_connections_are_resent_only_when_that_is_harmless(driver: IronicDriver, ironic_url: str) -> None:
    node = enrolled(driver, fake_node("kiln-flaky"))
    with flaky_proxy(ironic_url) as proxy:
        flaky = IronicDriver(f"http://127.0.0.1:{proxy.port}", timeout=10)
        assert flaky.get(node).provision_state is S.ENROLL  # version discovery and the connection pool settle
        proxy.breaks = 2  # a read survives two broken connections in a row
        assert flaky.get(node).provision_state is S.ENROLL and proxy.broken == 2
        proxy.breaks = 1
        flaky.set_maintenance(node, True, "resent")
        assert proxy.broken == 3 and driver.get(node).maintenance_reason == "resent"
        flaky.set_maintenance(node, False)
        proxy.breaks, seen = 1, proxy.requests
        with pytest.raises(DriverError) as broken:  # Ironic may have acted on it: not sent again
            flaky.set_provision_state(node, "manage")
        assert broken.value.status == 502 and "is unreachable" in str(broken.value)
        assert proxy.requests == seen + 1 and proxy.broken == 4
        assert driver.get(node).provision_state is S.ENROLL
        proxy.breaks = 3  # more broken connections than resends: the read fails after three tries
        with pytest.raises(DriverError) as still_broken:
            flaky.list_all()
        assert still_broken.value.status == 502 and proxy.broken == 7
        proxy.breaks = 1  # a node created over a broken connection: Ironic has none of that name, so sent again
        made = flaky.enroll(fake_node("kiln-flaky-new"))
        assert proxy.broken == 8 and [n.name for n in driver.list_all()].count("kiln-flaky-new") == 1
    driver.remove(node)
    driver.remove(dataclasses.replace(fake_node("kiln-flaky-new"), external_id=made.external_id))


def test_each_call_makes_only_the_requests_it_needs(driver: IronicDriver, ironic_url: str) -> None:
    """Counted at a loopback proxy: a state change is one PUT (no read-back of the whole node),
    a deploy adds one PATCH, and a poll is one GET."""
    node = enrolled(driver, fake_node("kiln-count"))
    with flaky_proxy(ironic_url) as proxy:
        counted = IronicDriver(f"http://127.0.0.1:{proxy.port}")
        with ThreadPoolExecutor(max_workers=20) as pool:  # twenty first calls at once, as a bulk action makes them
            assert set(pool.map(lambda _: counted.get(node).provision_state, range(20))) == {S.ENROLL}

        def requests_of(call: Callable[[], object]) -> int:
            before = proxy.requests
            call()
            return proxy.requests - before

        assert requests_of(lambda: counted.get(node)) == 1
        assert requests_of(lambda: counted.set_provision_state(node, "manage")) == 1
        wait_for(driver, node, settled)
        assert requests_of(lambda: counted.set_provision_state(node, "provide")) == 1
        wait_for(driver, node, settled)
        assert requests_of(lambda: counted.set_provision_state(node, "active", Image("http://images.example/a.qcow2",
                                                                                       SHA256))) == 2
        assert wait_for(driver, node, settled).provision_state is S.ACTIVE
        # a new kind of checksum: the previous one's keys, which the PATCH's answer shows, go in a second PATCH
        assert requests_of(lambda: counted.set_provision_state(node, "rebuild", Image("http://images.example/b.qcow2",
                                                                                        MD5))) == 3
        assert wait_for(driver, node, settled).provision_state is S.ACTIVE
        assert requests_of(lambda: counted.set_maintenance(node, True, "counted")) == 1
        assert requests_of(lambda: counted.set_maintenance(node, False)) == 1
    assert act(driver, node, "deleted").provision_state is S.AVAILABLE
    driver.remove(node)


def test_real_ipmi_power_through_ironic(ironic_url: str, bmcs: list[dict]) -> None:
    bmc = bmcs[0]
    statuses: list[int] = []
    connection = openstack.connection.Connection(
        auth_type="none", baremetal_endpoint_override=ironic_url, baremetal_status_code_retries=0
    )
    connection.session.session.hooks["response"].append(lambda response, **_: statuses.append(response.status_code))
    driver = IronicDriver(connection=connection)

    def bmc_power() -> str:
        with urllib.request.urlopen(bmc["control_url"], timeout=5) as answer:
            return json.load(answer)["power_state"]

    node = enrolled(driver, NodeTarget(
        name="kiln-ipmi", external_id=None, bmc_driver="ipmi", bmc_address=f"ipmi://{bmc['host']}:{bmc['port']}",
        bmc_username=bmc["username"], bmc_password=bmc["password"], hardware_type="fake-hardware",
    ))
    assert act(driver, node, "manage").provision_state is S.MANAGEABLE  # verifying reads power over IPMI
    assert driver.get(node).power_state is PowerState.ON and bmc_power() == "on"

    driver.set_power(node, "power off")
    wait_for(driver, node, lambda n: n.power_state is PowerState.OFF)
    assert bmc_power() == "off"
    driver.set_power(node, "power on")
    wait_for(driver, node, lambda n: n.power_state is PowerState.ON)
    assert bmc_power() == "on"

    # A second request while Ironic's conductor still holds the node (IPMI power off with
    # min_command_interval=1 takes ~3 s) gets 409 NodeLocked; the driver retries it.
    statuses.clear()
    driver.set_power(node, "power off")
    driver.set_power(node, "power on")
    assert 409 in statuses, f"expected a NodeLocked 409 to be retried; saw {statuses}"
    wait_for(driver, node, lambda n: n.power_state is PowerState.ON and settled(n))
    assert bmc_power() == "on"
    driver.remove(node)


def test_node_attributes_for_each_bmc_kind() -> None:
    ipmi = ironic_node_attributes(NodeTarget(
        name="n1", external_id=None, bmc_driver="ipmi", bmc_address="ipmi://10.0.0.5", bmc_username="u",
        bmc_password="p", properties={"ipmi_cipher_suite": 17, "ipmi_privilege": "operator", "cpus": 4},
    ))
    assert ipmi["driver"] == "ipmi" and ipmi["properties"] == {"cpus": 4}
    assert ipmi["driver_info"] == {"ipmi_address": "10.0.0.5", "ipmi_port": 623, "ipmi_cipher_suite": "17",
                                   "ipmi_username": "u", "ipmi_password": "p", "ipmi_priv_level": "OPERATOR"}
    assert "power_interface" not in ipmi

    redfish = ironic_node_attributes(NodeTarget(
        name="n2", external_id=None, bmc_driver="redfish", bmc_address="redfish://bmc.example:8443/redfish/v1/Systems/1",
        bmc_username="u", bmc_password="p",
    ))
    assert redfish["driver"] == "redfish" and "power_interface" not in redfish
    assert redfish["driver_info"] == {"redfish_address": "https://bmc.example:8443",
                                      "redfish_system_id": "/redfish/v1/Systems/1",
                                      "redfish_username": "u", "redfish_password": "p", "redfish_verify_ca": True}
    self_signed = dataclasses.replace(fake_node("n4", bmc_address="redfish+https://[fd00::5]/redfish/v1/Systems/2"),
                                      hardware_type=None, properties={})
    assert ironic_node_attributes(self_signed, redfish_verify_tls=False)["driver_info"] == {
        "redfish_address": "https://[fd00::5]", "redfish_system_id": "/redfish/v1/Systems/2",
        "redfish_username": "admin", "redfish_password": "secret", "redfish_verify_ca": False}
    # fake-hardware: Redfish power and management from a Redfish address; none for a host under .invalid
    for no_bmc in ("redfish://bmc-6.test.invalid", "redfish+http://BMC-6.Lab.Invalid:8000", "ipmi://invalid"):
        assert ironic_node_attributes(fake_node("n5", bmc_address=no_bmc))["driver_info"] == {}
        assert "power_interface" not in ironic_node_attributes(fake_node("n5", bmc_address=no_bmc))
    real_power = ironic_node_attributes(fake_node("n6", bmc_address="redfish+http://10.0.0.6:8000"))
    assert (real_power["driver"], real_power["power_interface"], real_power["management_interface"]) == (
        "fake-hardware", "redfish", "redfish")
    assert real_power["driver_info"]["redfish_address"] == "http://10.0.0.6:8000"
    assert real_power["driver_info"]["redfish_system_id"] == "" and real_power["properties"] == {}

    with pytest.raises(DriverError) as bad:
        ironic_node_attributes(fake_node("n3", bmc_address="http://10.0.0.5"))
    assert bad.value.status == 400


def test_unknown_state_from_a_newer_ironic_is_a_driver_error() -> None:
    newer = SimpleNamespace(id="u-1", provision_state="teleporting", power_state="power on",
                            target_provision_state=None, is_maintenance=False, maintenance_reason=None, last_error=None)
    with pytest.raises(DriverError) as unknown:
        _backend_node("kiln-new", newer)
    assert unknown.value.status == 502 and "'teleporting'" in str(unknown.value) and "kiln-new" in str(unknown.value)


def test_constructor_needs_somewhere_to_connect() -> None:
    with pytest.raises(ValueError):
        IronicDriver()
