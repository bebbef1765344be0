"""The Metal3 driver against a real kube-apiserver with Metal3's BareMetalHost CRD.

There is no baremetal-operator here: the tests play it, writing the BareMetalHost `status`
subresource the way BMO does, and check what the driver wrote to `spec`/`metadata` and how
it reads the status back.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from fleet.provisioning.base import DriverError, Image, NodeTarget
from fleet.provisioning.states import PowerState, ProvisionState
from tests.kube_helpers import install_crd
from tests.peers.harness import running_peer

from fleet.provisioning.metal3 import Metal3Driver
from fleet.provisioning.metal3_hosts import DETACHED_ANNOTATION, PAUSED_ANNOTATION, backend_node, image_spec


S = ProvisionState
GROUP, VERSION, PLURAL = "metal3.io", "v1alpha1", "baremetalhosts"
CRD = Path(__file__).parent / "peers" / "crds" / "metal3-baremetalhost.yaml"
SHA = "a" * 64
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running kube-apiserver with the BareMetalHost CRD established; its kubeconfig path."""
    state = tmp_path_factory.mktemp("kube")
    with running_peer("kube", state):
        path = str(state / "kubeconfig")
        api = k8s_config.new_client_from_config(config_file=path)
        install_crd(api, CRD)
        api.close()
        yield path


@pytest.fixture(scope="module")
def kube(kubeconfig: str) -> Iterator[k8s.ApiClient]:
    """A plain client for the test's own (operator-side) reads and writes."""
    api = k8s_config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


@pytest.fixture
def namespace() -> str:
    """A fresh namespace per test (the driver creates it on first enroll)."""
    return f"m3-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def driver(kubeconfig: str, namespace: str) -> Iterator[Metal3Driver]:
    """The driver under test, on the real apiserver."""
    drv = Metal3Driver(kubeconfig, namespace=namespace)
    yield drv
    drv.close()


def target(name: str | None = None, **overrides: Any) -> NodeTarget:
    """A node as Kiln would pass it."""
    fields: dict[str, Any] = dict(
        name=name or f"gpu-{uuid.uuid4().hex[:6]}",
        external_id=None,
        bmc_driver="ipmi",
        bmc_address="ipmi://10.0.0.7:623",
        bmc_username="admin",
        bmc_password="s3cret",
        boot_mac="52:54:00:12:34:56",
        resource_class="gpu-h100",
    )
    fields.update(overrides)
    return NodeTarget(**fields)


def enrolled(driver: Metal3Driver, **overrides: Any) -> NodeTarget:
    """Enroll a node and return its target with the external id filled in."""
    node = target(**overrides)
    created = driver.enroll(node)
    return NodeTarget(**{**node.__dict__, "external_id": created.external_id})


def bmh(kube: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """The BareMetalHost as stored."""
    return k8s.CustomObjectsApi(kube).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def operator_sets(
    kube: k8s.ApiClient, namespace: str, name: str, state: str, *, powered: bool = False,
    operational: str = "OK", error: str = "", error_type: str | None = None,
) -> None:
    """Play BMO: write the status subresource (with every field the CRD requires)."""
    status: dict[str, Any] = {
        "errorCount": 1 if error else 0,
        "errorMessage": error,
        "operationalStatus": operational,
        "poweredOn": powered,
        "provisioning": {"ID": "ironic-node-uuid", "state": state},
        "provisioningFailCount": 0,
    }
    if error_type:
        status["errorType"] = error_type
    k8s.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE
    )


def secret_exists(kube: k8s.ApiClient, namespace: str, name: str) -> bool:
    """Whether Secret `name` exists."""
    try:
        k8s.CoreV1Api(kube).read_namespaced_secret(name, namespace)
    except k8s.ApiException as exc:
        assert exc.status == 404
        return False
    return True


def test_enroll_writes_secret_and_offline_host(driver: Metal3Driver, kube: k8s.ApiClient, namespace: str) -> None:
    node = target(bmc_address="redfish://10.0.0.8/redfish/v1/Systems/1", bmc_driver="redfish")
    created = driver.enroll(node)

    assert created.external_id == node.name
    assert (created.provision_state, created.power_state, created.target_provision_state) == (S.ENROLL, None, None)
    host = bmh(kube, namespace, node.name)
    assert host["spec"]["online"] is False
    assert host["spec"]["bmc"] == {"address": "redfish://10.0.0.8/redfish/v1/Systems/1",
                                   "credentialsName": f"{node.name}-bmc-secret"}
    assert host["spec"]["bootMACAddress"] == "52:54:00:12:34:56"
    assert host["metadata"]["labels"] == {"kiln.io/managed": "true", "kiln.io/resource-class": "gpu-h100"}
    secret = k8s.CoreV1Api(kube).read_namespaced_secret(f"{node.name}-bmc-secret", namespace)
    assert secret.type == "Opaque"
    decoded = {key: base64.b64decode(value).decode() for key, value in secret.data.items()}
    assert decoded == {"username": "admin", "password": "s3cret"}
    assert driver.get(node).provision_state == S.ENROLL


def test_bare_host_port_gets_the_driver_scheme(driver: Metal3Driver, kube: k8s.ApiClient, namespace: str) -> None:
    node = enrolled(driver, bmc_address="10.0.0.9:6230")
    assert bmh(kube, namespace, node.name)["spec"]["bmc"]["address"] == "ipmi://10.0.0.9:6230"


def test_full_lifecycle_as_bmo_drives_it(driver: Metal3Driver, kube: k8s.ApiClient, namespace: str) -> None:
    node = enrolled(driver)
    name = node.name

    operator_sets(kube, namespace, name, "registering")
    seen = driver.get(node)
    assert (seen.provision_state, seen.target_provision_state) == (S.VERIFYING, "available")
    assert seen.power_state == PowerState.OFF
    driver.set_provision_state(node, "manage")  # Metal3 is registering it already: a no-op

    operator_sets(kube, namespace, name, "inspecting")
    assert driver.get(node).provision_state == S.INSPECTING
    operator_sets(kube, namespace, name, "available")
    seen = driver.get(node)
    assert (seen.provision_state, seen.target_provision_state, seen.last_error) == (S.AVAILABLE, None, None)
    driver.set_provision_state(node, "provide")  # already available: a no-op
    driver.set_provision_state(node, "manage")

    driver.set_provision_state(node, "active", Image("http://images/ubuntu.qcow2", f"sha256:{SHA}", "#cloud-config\n"))
    host = bmh(kube, namespace, name)
    assert host["spec"]["image"] == {"url": "http://images/ubuntu.qcow2", "checksum": SHA, "checksumType": "sha256"}
    assert host["spec"]["online"] is True
    assert host["spec"]["userData"] == {"name": f"{name}-user-data", "namespace": namespace}
    user_data = k8s.CoreV1Api(kube).read_namespaced_secret(f"{name}-user-data", namespace)
    assert base64.b64decode(user_data.data["userData"]).decode() == "#cloud-config\n"
    pending = driver.get(node)  # BMO has not reacted yet: the request already reads as under way
    assert (pending.provision_state, pending.target_provision_state) == (S.DEPLOYING, "active")

    operator_sets(kube, namespace, name, "provisioning")
    assert (driver.get(node).provision_state, driver.get(node).target_provision_state) == (S.DEPLOYING, "active")
    operator_sets(kube, namespace, name, "provisioned", powered=True)
    seen = driver.get(node)
    assert (seen.provision_state, seen.target_provision_state, seen.power_state) == (S.ACTIVE, None, PowerState.ON)

    driver.set_provision_state(node, "deleted")
    host = bmh(kube, namespace, name)
    assert "image" not in host["spec"] and "userData" not in host["spec"]
    assert host["spec"]["online"] is False
    assert not secret_exists(kube, namespace, f"{name}-user-data")
    assert (driver.get(node).provision_state, driver.get(node).target_provision_state) == (S.DELETING, "available")
    operator_sets(kube, namespace, name, "deprovisioning", powered=True)
    assert driver.get(node).provision_state == S.DELETING
    operator_sets(kube, namespace, name, "available")
    assert driver.get(node).provision_state == S.AVAILABLE

    driver.set_provision_state(node, "inspect")
    assert bmh(kube, namespace, name)["metadata"]["annotations"]["inspect.metal3.io"] == ""
    assert driver.get(node).provision_state == S.INSPECTING


def test_power_and_maintenance(driver: Metal3Driver, kube: k8s.ApiClient, namespace: str) -> None:
    node = enrolled(driver)
    driver.set_power(node, "power on")
    assert bmh(kube, namespace, node.name)["spec"]["online"] is True
    driver.set_power(node, "power off")
    assert bmh(kube, namespace, node.name)["spec"]["online"] is False
    driver.set_power(node, "rebooting")
    assert bmh(kube, namespace, node.name)["metadata"]["annotations"]["reboot.metal3.io"] == ""
    with pytest.raises(DriverError) as err:
        driver.set_power(node, "soft power off")
    assert err.value.status == 400

    driver.set_maintenance(node, True, "replacing a GPU")
    assert bmh(kube, namespace, node.name)["metadata"]["annotations"][PAUSED_ANNOTATION] == "replacing a GPU"
    seen = driver.get(node)
    assert (seen.maintenance, seen.maintenance_reason) == (True, "replacing a GPU")
    driver.set_maintenance(node, False)
    assert PAUSED_ANNOTATION not in bmh(kube, namespace, node.name)["metadata"].get("annotations", {})
    assert driver.get(node).maintenance is False
    driver.set_maintenance(node, True)
    seen = driver.get(node)
    assert (seen.maintenance, seen.maintenance_reason) == (True, None)


@pytest.mark.parametrize(
    ("bmh_state", "error_type", "expected_state", "expected_power"),
    [
        ("provisioning", "provisioning error", S.DEPLOY_FAILED, PowerState.ON),
        ("inspecting", "inspection error", S.INSPECT_FAILED, PowerState.ON),
        ("registering", "registration error", S.ENROLL, PowerState.ON),
        ("preparing", "preparation error", S.CLEAN_FAILED, PowerState.ON),
        ("deprovisioning", "provisioning error", S.ERROR, PowerState.ON),
        ("provisioned", "power management error", S.ACTIVE, PowerState.ERROR),
    ],
)
def test_operator_errors_show_as_last_error(
    driver: Metal3Driver, kube: k8s.ApiClient, namespace: str,
    bmh_state: str, error_type: str, expected_state: ProvisionState, expected_power: PowerState,
) -> None:
    node = enrolled(driver)
    message = f"{error_type}: IPMI said no"
    operator_sets(kube, namespace, node.name, bmh_state, powered=True, operational="error",
                  error=message, error_type=error_type)
    seen = driver.get(node)
    assert (seen.provision_state, seen.power_state, seen.last_error) == (expected_state, expected_power, message)


def test_deploy_after_failed_deploy_is_allowed(driver: Metal3Driver, kube: k8s.ApiClient, namespace: str) -> None:
    node = enrolled(driver)
    operator_sets(kube, namespace, node.name, "provisioning", operational="error", error="image checksum mismatch",
                  error_type="provisioning error")
    driver.set_provision_state(node, "active", Image("http://images/fixed.img", "d41d8cd98f00b204e9800998ecf8427e"))
    assert bmh(kube, namespace, node.name)["spec"]["image"]["checksumType"] == "md5"
    assert "userData" not in bmh(kube, namespace, node.name)["spec"]


def test_illegal_and_unsupported_actions_name_the_node(
    driver: Metal3Driver, kube: k8s.ApiClient, namespace: str
) -> None:
    node = enrolled(driver)
    with pytest.raises(DriverError) as err:
        driver.set_provision_state(node, "active", Image("http://images/a.img", f"sha256:{SHA}"))
    assert err.value.status == 400
    assert str(err.value) == (f'The requested action "active" can not be performed on node "{node.name}" '
                              'while it is in state "enroll".')
    assert "image" not in bmh(kube, namespace, node.name)["spec"]
    with pytest.raises(DriverError, match="registers, inspects and cleans hosts by itself") as err:
        driver.set_provision_state(node, "manage")
    assert err.value.status == 400
    operator_sets(kube, namespace, node.name, "inspecting")
    with pytest.raises(DriverError, match=f'{node.name}.*"inspecting"'):
        driver.set_provision_state(node, "provide")
    for verb, why in [("rebuild", "undeploy then deploy"), ("abort", "cannot abort"), ("clean", "unknown")]:
        with pytest.raises(DriverError, match=why) as err:
            driver.set_provision_state(node, verb)
        assert err.value.status == 400 and node.name in str(err.value)


def test_duplicate_enroll_is_409_and_leaves_no_secret(
    driver: Metal3Driver, kube: k8s.ApiClient, namespace: str
) -> None:
    first = enrolled(driver)
    with pytest.raises(DriverError) as err:
        driver.enroll(target(first.name, bmc_password="another"))
    assert err.value.status == 409 and first.name in str(err.value)
    secret = k8s.CoreV1Api(kube).read_namespaced_secret(f"{first.name}-bmc-secret", namespace)
    assert base64.b64decode(secret.data["password"]).decode() == "s3cret"  # the first host's, untouched

    # A host someone else created (other credentials Secret): 409, and no Secret of ours appears.
    k8s.CustomObjectsApi(kube).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "BareMetalHost", "metadata": {"name": "foreign"},
        "spec": {"online": True, "bmc": {"address": "ipmi://10.1.1.1", "credentialsName": "foreign-creds"}},
    })
    with pytest.raises(DriverError) as err:
        driver.enroll(target("foreign"))
    assert err.value.status == 409
    assert not secret_exists(kube, namespace, "foreign-bmc-secret")


def test_rejected_host_leaves_no_orphan_secret(driver: Metal3Driver, kube: k8s.ApiClient, namespace: str) -> None:
    node = target(boot_mac="not-a-mac")
    with pytest.raises(DriverError) as err:
        driver.enroll(node)
    assert err.value.status == 400
    assert "spec.bootMACAddress" in str(err.value)  # the apiserver's own validation message
    assert not secret_exists(kube, namespace, f"{node.name}-bmc-secret")
    with pytest.raises(DriverError) as err:
        driver.get(node)
    assert err.value.status == 404

    for bad in ("idrac://10.0.0.1", "ipmi://bad_host!:623", "ipmi://10.0.0.1:notaport"):
        with pytest.raises(DriverError) as err:
            driver.enroll(target(bmc_address=bad))
        assert err.value.status == 400 and bad in str(err.value)
    with pytest.raises(DriverError, match="username and password"):
        driver.enroll(target(bmc_password=None))
    assert k8s.CoreV1Api(kube).list_namespaced_secret(namespace, label_selector="kiln.io/managed=true").items == []


def test_leftover_secret_of_ours_is_reused(driver: Metal3Driver, kube: k8s.ApiClient, namespace: str) -> None:
    node = target()
    driver.enroll(node)
    k8s.CustomObjectsApi(kube).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, node.name)
    driver.enroll(target(node.name, bmc_password="rotated"))  # the old Secret is a leftover: replaced
    secret = k8s.CoreV1Api(kube).read_namespaced_secret(f"{node.name}-bmc-secret", namespace)
    assert base64.b64decode(secret.data["password"]).decode() == "rotated"


def test_list_all_returns_only_kiln_hosts(driver: Metal3Driver, kube: k8s.ApiClient, namespace: str) -> None:
    ours = [enrolled(driver) for _ in range(3)]
    operator_sets(kube, namespace, ours[0].name, "available", powered=False)
    k8s.CustomObjectsApi(kube).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "BareMetalHost", "metadata": {"name": "not-kiln"},
        "spec": {"online": False, "bmc": {"address": "ipmi://10.1.1.2", "credentialsName": "x"}},
    })
    listed = {n.external_id: n for n in driver.list_all()}
    assert set(listed) == {n.name for n in ours}
    assert listed[ours[0].name].provision_state == S.AVAILABLE
    assert listed[ours[1].name].provision_state == S.ENROLL


def test_remove_deletes_host_and_secrets(driver: Metal3Driver, kube: k8s.ApiClient, namespace: str) -> None:
    node = enrolled(driver)
    operator_sets(kube, namespace, node.name, "available")
    driver.set_provision_state(node, "active", Image("http://images/a.img", f"sha256:{SHA}", "#cloud-config\n"))
    operator_sets(kube, namespace, node.name, "provisioned", powered=True)
    with pytest.raises(DriverError) as err:
        driver.remove(node)  # BMO would deprovision (wipe) it
    assert err.value.status == 409 and f'"{node.name}"' in str(err.value) and '"active"' in str(err.value)

    k8s.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, node.name, {"metadata": {"annotations": {DETACHED_ANNOTATION: ""}}},
        _content_type=MERGE)
    assert driver.get(node).maintenance is True
    driver.remove(node)  # detached: BMO lets it go untouched
    with pytest.raises(DriverError) as err:
        driver.get(node)
    assert err.value.status == 404
    assert not secret_exists(kube, namespace, f"{node.name}-bmc-secret")
    assert not secret_exists(kube, namespace, f"{node.name}-user-data")
    driver.remove(node)  # already gone: fine


def test_unreachable_apiserver_is_502_fast(kubeconfig: str, tmp_path: Path) -> None:
    config = yaml.safe_load(Path(kubeconfig).read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"  # nothing listens there
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(yaml.safe_dump(config))
    driver = Metal3Driver(str(dead), namespace="metal3", timeout=2)
    started = time.monotonic()
    with pytest.raises(DriverError) as err:
        driver.get(target())
    assert err.value.status == 502 and "unreachable" in str(err.value)
    with pytest.raises(DriverError) as err:
        driver.list_all()
    assert err.value.status == 502
    assert time.monotonic() - started < 5

    garbage = tmp_path / "garbage.kubeconfig"
    garbage.write_text("clusters: [")
    for path in (garbage, tmp_path / "missing.kubeconfig"):
        with pytest.raises(DriverError) as err:
            Metal3Driver(str(path)).list_all()
        assert err.value.status == 502 and str(path) in str(err.value)


def test_api_client_can_be_injected(driver: Metal3Driver, kube: k8s.ApiClient, namespace: str) -> None:
    first = enrolled(driver)  # creates the namespace
    injected = Metal3Driver(namespace=namespace, api_client=kube)
    second = enrolled(injected)  # the namespace exists already: fine
    assert sorted(n.external_id for n in injected.list_all()) == sorted([first.name, second.name])


@pytest.mark.parametrize(
    ("checksum", "expected"),
    [
        (f"sha256:{SHA}", {"checksum": SHA, "checksumType": "sha256"}),
        (f"SHA512:{'B' * 128}", {"checksum": "b" * 128, "checksumType": "sha512"}),
        ("d41d8cd98f00b204e9800998ecf8427e", {"checksum": "d41d8cd98f00b204e9800998ecf8427e", "checksumType": "md5"}),
        ("http://images/SHA256SUMS", {"checksum": "http://images/SHA256SUMS", "checksumType": "auto"}),
    ],
)
def test_image_checksums(checksum: str, expected: dict[str, str]) -> None:
    assert image_spec(Image("http://images/a.img", checksum)) == {"url": "http://images/a.img", **expected}


@pytest.mark.parametrize("checksum", ["crc32:deadbeef", "abc", "sha256:not-hex"])
def test_bad_checksums_are_400(checksum: str) -> None:
    with pytest.raises(DriverError) as err:
        image_spec(Image("http://images/a.img", checksum))
    assert err.value.status == 400


def test_mapping_of_states_the_other_tests_do_not_reach() -> None:
    image = {"url": "http://images/a.img", "checksum": SHA, "checksumType": "sha256"}

    def host(state: str, *, deployed: bool = True, **status: Any) -> dict[str, Any]:
        return {"metadata": {"name": "h"}, "spec": {"online": True, **({"image": image} if deployed else {})},
                "status": {"operationalStatus": "OK", "poweredOn": True, "provisioning": {"state": state}, **status}}

    assert backend_node(host("externally provisioned", deployed=False)).provision_state == S.ACTIVE
    assert backend_node(host("provisioned", operationalStatus="servicing")).provision_state == S.SERVICING
    failed = backend_node(
        host("provisioned", operationalStatus="error", errorType="servicing error", errorMessage="bios")
    )
    assert (failed.provision_state, failed.last_error) == (S.SERVICE_FAILED, "bios")
    assert backend_node(host("powering off before delete")).provision_state == S.DELETING
    assert backend_node(host("match profile", deployed=False)).provision_state == S.CLEANING
    assert backend_node(host("ready", deployed=False)).provision_state == S.AVAILABLE
    assert backend_node(host("inspecting")).target_provision_state == "active"  # image already requested
    detached = backend_node(host("provisioned", operationalStatus="detached"))
    assert (detached.provision_state, detached.maintenance) == (S.ACTIVE, True)
    detached = backend_node(host("provisioned", deployed=False, operationalStatus="detached"))
    assert (detached.provision_state, detached.target_provision_state) == (S.ACTIVE, None)  # BMO will not act
    unknown = backend_node(host("levitating"))
    assert unknown.provision_state == S.ERROR and "levitating" in (unknown.last_error or "")
    being_deleted = {**host("provisioned"), "metadata": {"name": "h", "deletionTimestamp": "2025-01-01T00:00:00Z"}}
    deleting = backend_node(being_deleted)
    assert (deleting.provision_state, deleting.target_provision_state) == (S.DELETING, "deleted")
    no_status = backend_node({"metadata": {"name": "h"}, "spec": {"online": False}})
    assert (no_status.provision_state, no_status.power_state) == (S.ENROLL, None)
