"""Redfish nodes provisioned through a real Ironic 39 (tests/peers/ironic.sh, `redfish` hardware
type enabled) against sushy-tools' Redfish emulator (tests/peers/redfish.sh start-emulator: fake
systems driver, HTTP basic auth). What Kiln and Ironic say is checked against the emulator's
own `PowerState` and `Boot` (read from it directly).

The emulator applies a power change 1-11 s after it is asked (at random, as hardware does), and
Ironic's redfish interfaces make several requests per step, so steps that talk to the BMC may
take up to `SLOW`'s 60 s, polled every 0.25 s (polling a loaded all-in-one Ironic faster only
slows its conductor down). The Kiln-level tests run the `kiln` CLI on PostgreSQL, like
tests/test_fleet_ironic.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.bmc import BmcAddress, parse_bmc_address
from fleet.models import Node
from fleet.schemas import NodeCreate
from fleet.provisioning.base import DriverError, Image, NodeTarget
from fleet.provisioning.ironic import IronicDriver
from fleet.provisioning.states import PowerState, ProvisionState
from kiln.security import SecretBox
from tests.cli_helpers import base_env
from tests.cli_helpers import run as kiln
from tests.conftest import TEST_SECRET_KEY
from tests.peer_fixtures import (  # noqa: F401 (fixtures)
    RedfishEmulator, delete_all_nodes, ironic_url, redfish_emulator, running_emulator, sdk,
)
from tests.test_ironic_driver import act, enrolled, wait_for
import openstack.connection

pytestmark = [
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning"),
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK60Warning"),
]
on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

S = ProvisionState
SLOW = {"timeout": 60.0, "interval": 0.25}  # wait_for's arguments for steps that talk to the BMC
IMAGE = Image("http://images.example/ubuntu-24.04.qcow2", "sha256:" + "7" * 64)
HEADER = "name,provisioner,bmc_address,bmc_username,bmc_password,ironic_driver"


@pytest.fixture
def driver(ironic_url: str, sdk: openstack.connection.Connection) -> IronicDriver:
    """Kiln's Ironic driver on an Ironic with no node."""
    delete_all_nodes(sdk)
    return IronicDriver(ironic_url)


def redfish_node(name: str, emulator: RedfishEmulator, system: int | None = 0, **changes) -> NodeTarget:
    """A node whose BMC is the emulator (system `system`; None: the address names no system)."""
    base = NodeTarget(name=name, external_id=None, bmc_driver="redfish", bmc_address=emulator.address(system),
                      bmc_username=emulator.username, bmc_password=emulator.password)
    return dataclasses.replace(base, **changes)


def power(driver: IronicDriver, node: NodeTarget, target: str, expected: PowerState) -> None:
    """Power the node through Ironic and wait until Ironic has done it."""
    driver.set_power(node, target)
    wait_for(driver, node, lambda n: n.power_state is expected and not n.target_power_state, **SLOW)


def test_redfish_address_forms_and_the_hardware_type_they_imply() -> None:
    assert parse_bmc_address("redfish://bmc-7:8443/redfish/v1/Systems/1/") == BmcAddress(
        "redfish", "bmc-7", 8443, "/redfish/v1/Systems/1", "https")
    assert parse_bmc_address("redfish+https://10.0.0.7").base_url == "https://10.0.0.7"
    plain = parse_bmc_address("redfish+http://127.0.0.1:8000")
    assert (plain.base_url, plain.path, plain.effective_port) == ("http://127.0.0.1:8000", "", 8000)
    for wrong, says in [("redfish://bmc-7/redfish/v1", "its path must be a system's"),
                        ("redfish+ftp://bmc-7", "unsupported BMC address"),
                        ("redfish://admin:pw@bmc-7", "must not carry credentials")]:
        with pytest.raises(ValueError, match=says):
            parse_bmc_address(wrong)
    row = {"name": "n1", "provisioner": "ironic", "bmc_address": "redfish://bmc-7"}
    assert NodeCreate.model_validate(row).ironic_driver == "redfish"
    assert NodeCreate.model_validate({**row, "bmc_address": "ipmi://bmc-7"}).ironic_driver == "ipmi"
    assert NodeCreate.model_validate({**row, "ironic_driver": "fake-hardware"}).ironic_driver == "fake-hardware"


def test_redfish_hardware_type_powers_the_emulated_system(driver: IronicDriver, sdk, redfish_emulator) -> None:
    node = enrolled(driver, redfish_node("rf-power", redfish_emulator))
    raw = sdk.baremetal.get_node(node.external_id)
    assert (raw.driver, raw.power_interface, raw.management_interface) == ("redfish", "redfish", "redfish")
    assert raw.driver_info == {
        "redfish_address": redfish_emulator.url, "redfish_system_id": redfish_emulator.system_path(0),
        "redfish_username": redfish_emulator.username, "redfish_password": "******", "redfish_verify_ca": False,
    }
    managed = act(driver, node, "manage", **SLOW)  # verifying reads the power state over Redfish
    assert (managed.provision_state, managed.power_state) == (S.MANAGEABLE, PowerState.OFF)
    assert redfish_emulator.power_state(0) == "Off"

    power(driver, node, "power on", PowerState.ON)
    assert redfish_emulator.power_state(0) == "On"
    power(driver, node, "power off", PowerState.OFF)
    assert redfish_emulator.power_state(0) == "Off"
    driver.remove(node)


def test_the_only_system_is_asked_from_the_bmc(driver: IronicDriver, sdk, redfish_emulator,
                                               tmp_path: Path) -> None:
    with running_emulator(tmp_path / "one-system", 1) as single:
        node = enrolled(driver, redfish_node("rf-found", single, None))
        assert sdk.baremetal.get_node(node.external_id).driver_info["redfish_system_id"] == single.system_path(0)
        driver.remove(node)

        wrong = redfish_node("rf-wrong-pw", single, None, bmc_password="not-the-password")
        with pytest.raises(DriverError) as refused:
            driver.enroll(wrong)
    assert refused.value.status == 400
    assert str(refused.value) == (f"node rf-wrong-pw: which Redfish system to enroll? {single.url}/redfish/v1/Systems "
                                  "refused the BMC username/password (HTTP 401)")

    with pytest.raises(DriverError) as ambiguous:
        driver.enroll(redfish_node("rf-two", redfish_emulator, None))
    assert ambiguous.value.status == 400 and "node rf-two" in str(ambiguous.value)
    assert "lists 2 systems" in str(ambiguous.value)
    assert all(redfish_emulator.system_path(i) in str(ambiguous.value) for i in (0, 1))
    assert list(sdk.baremetal.nodes()) == []


def test_a_self_signed_bmc_certificate_is_refused_unless_asked(driver: IronicDriver, ironic_url: str,
                                                                tmp_path: Path) -> None:
    with running_emulator(tmp_path / "tls", 1, "https") as bmc:
        assert bmc.address(None).startswith("redfish+https://127.0.0.1:")
        with pytest.raises(DriverError) as unverified:  # Kiln asking the BMC which system
            driver.enroll(redfish_node("rf-tls", bmc, None))
        assert unverified.value.status == 400 and "CERTIFICATE_VERIFY_FAILED" in str(unverified.value)
        checked = enrolled(driver, redfish_node("rf-tls", bmc))  # Ironic checks the certificate itself
        refused = act(driver, checked, "manage", **SLOW)
        assert refused.provision_state is S.ENROLL
        assert refused.last_error.startswith("Failed to get power state for node rf-tls.")
        assert "CERTIFICATE_VERIFY_FAILED" in refused.last_error
        driver.remove(checked)

        trusting = IronicDriver(ironic_url, redfish_verify_tls=False)  # KILN_REDFISH_VERIFY_TLS=false
        node = enrolled(trusting, redfish_node("rf-tls", bmc, None))
        assert act(trusting, node, "manage", **SLOW).provision_state is S.MANAGEABLE
        trusting.remove(node)


# -- through Kiln --------------------------------------------------------------------------


@pytest.fixture
def env(engine: Engine, tmp_path: Path, ironic_url: str, sdk: openstack.connection.Connection) -> dict[str, str]:
    """Environment for `kiln` on the test database and the real Ironic (with no node)."""
    delete_all_nodes(sdk)
    return base_env(tmp_path, KILN_DATABASE_URL=engine.url.render_as_string(hide_password=False),
                    KILN_IRONIC_URL=ironic_url, KILN_SECRET_KEY=TEST_SECRET_KEY)


def import_csv(env: dict[str, str], tmp_path: Path, *rows: str, header: str = HEADER) -> None:
    path = tmp_path / "redfish-nodes.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    result = kiln(env, "nodes", "import", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def action(env: dict[str, str], verb: str, name: str, *options: str) -> tuple[int, dict]:
    """`kiln nodes action VERB NAME [OPTIONS] -o json`: its exit status and the node's outcome."""
    result = kiln(env, "nodes", "action", verb, name, *options, "--output", "json")
    (outcome,) = json.loads(result.stdout)
    return result.returncode, outcome


@on_postgresql
def test_power_through_kiln(env: dict[str, str], sdk, redfish_emulator: RedfishEmulator, tmp_path: Path) -> None:
    e = redfish_emulator
    import_csv(env, tmp_path, f"kiln-rf,ironic,{e.address(0)},{e.username},{e.password},")  # no ironic_driver
    raw = sdk.baremetal.get_node("kiln-rf")
    assert (raw.driver, raw.driver_info["redfish_system_id"]) == ("redfish", e.system_path(0))

    assert action(env, "manage", "kiln-rf")[1]["state"] == "manageable"
    status, on = action(env, "power-on", "kiln-rf")
    assert (status, on["ok"], on["error"]) == (0, True, None)
    assert e.power_state(0) == "On" and sdk.baremetal.get_node("kiln-rf").power_state == "power on"
    status, off = action(env, "power-off", "kiln-rf")
    assert (status, off["ok"]) == (0, True)
    assert e.power_state(0) == "Off"
    listed = {n["name"]: n for n in json.loads(kiln(env, "nodes", "list", "--output", "json").stdout)}
    assert (listed["kiln-rf"]["power_state"], listed["kiln-rf"]["bmc_driver"]) == ("power off", "redfish")


@on_postgresql
def test_a_wrong_password_is_a_readable_error_naming_the_node(env: dict[str, str], sdk, engine: Engine,
                                                               redfish_emulator: RedfishEmulator,
                                                               tmp_path: Path) -> None:
    e = redfish_emulator
    import_csv(env, tmp_path, f"kiln-rf-pw,ironic,{e.address(1)},{e.username},not-the-password,redfish")
    status, outcome = action(env, "manage", "kiln-rf-pw")
    assert status == 1 and not outcome["ok"] and outcome["state"] == "enroll"
    error = outcome["error"]
    assert error.startswith("Failed to get power state for node kiln-rf-pw. Error: Redfish exception occurred.")
    assert f"{e.system_path(1)} returned code 401" in error and "Incorrect username or password" in error
    assert "not-the-password" not in error and sdk.baremetal.get_node("kiln-rf-pw").id not in error

    table = kiln(env, "nodes", "action", "manage", "kiln-rf-pw")
    assert table.returncode == 1 and "kiln-rf-pw" in table.stdout and "0 succeeded, 1 failed" in table.stdout
    with Session(engine) as session:  # nothing lost: the node and its (encrypted) password are kept
        node = session.exec(select(Node).where(Node.name == "kiln-rf-pw")).one()
        assert node.provision_state == "enroll" and node.last_error == error
        assert SecretBox(TEST_SECRET_KEY).decrypt(node.bmc_password_encrypted) == "not-the-password"


@on_postgresql
def test_full_deploy_of_a_redfish_bmc_without_an_agent_ramdisk(env: dict[str, str], sdk,
                                                               redfish_emulator: RedfishEmulator,
                                                               tmp_path: Path) -> None:
    e = redfish_emulator
    # What the BMC says reaches Ironic through its redfish management interface: boot mode.
    httpx.patch(e.url + e.system_path(1), json={"Boot": {"BootSourceOverrideMode": "Legacy"}},
                auth=(e.username, e.password), timeout=10).raise_for_status()
    import_csv(env, tmp_path, f"kiln-rf-deploy,ironic,{e.address(1)},{e.username},{e.password},fake-hardware,"
               "52:54:00:aa:01:01", header=HEADER + ",boot_mac")
    raw = sdk.baremetal.get_node("kiln-rf-deploy")
    assert (raw.driver, raw.power_interface, raw.management_interface, raw.deploy_interface, raw.boot_interface) == (
        "fake-hardware", "redfish", "redfish", "fake", "fake")  # fake deploy, real power
    assert (raw.driver_info["redfish_system_id"], raw.properties) == (e.system_path(1), {})

    status, managed = action(env, "manage", "kiln-rf-deploy")  # verifying reads the power state over Redfish
    assert (status, managed["state"], managed["error"]) == (0, "manageable", None)
    assert e.power_state(1) == "Off"
    assert action(env, "provide", "kiln-rf-deploy")[1]["state"] == "available"  # automated cleaning
    image = ("--image-url", IMAGE.url, "--image-checksum", IMAGE.checksum)
    status, deployed = action(env, "deploy", "kiln-rf-deploy", *image)
    assert (status, deployed["state"], deployed["error"]) == (0, "active", None)
    assert sdk.baremetal.get_node("kiln-rf-deploy").boot_mode == "bios"  # the BMC's Legacy, read over Redfish

    status, on = action(env, "power-on", "kiln-rf-deploy")  # the deployed machine, on at its BMC
    assert (status, on["ok"]) == (0, True) and e.power_state(1) == "On"
    status, undeployed = action(env, "undeploy", "kiln-rf-deploy")  # undeploy, then automated cleaning
    assert (status, undeployed["state"], undeployed["error"]) == (0, "available", None)
    assert e.power_state(1) == "On"
    listed = {n["name"]: n for n in json.loads(kiln(env, "nodes", "list", "--output", "json").stdout)}
    assert (listed["kiln-rf-deploy"]["provision_state"], listed["kiln-rf-deploy"]["power_state"]) == (
        "available", "power on")
