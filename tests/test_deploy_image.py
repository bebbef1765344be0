"""The container image (deploy/container/Containerfile): built from this checkout by a real
buildah and run by podman the way the Helm chart runs it — as UID 10001, read-only root
filesystem, all capabilities dropped, the data dir and /tmp as volumes.

`tests/peers/buildah.sh` installs buildah/podman/runc (Debian) and a bookworm base image made
by mmdebstrap (Docker Hub is not reachable here); layers are cached in ~/.cache/kiln, so only
the first build is slow. Missing tools skip these tests locally and fail them in CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kiln import __version__
from tests.browser import free_port
from tests.peers.harness import missing_peer
from tests.test_deploy_helm import deployment, helm, render  # noqa: F401  (helm: the fixture)

PEER = Path(__file__).parent / "peers" / "buildah.sh"
TAG = "localhost/kiln:test"
SECRET_KEY = "image-test-secret-key-" + "k" * 32


def buildah_sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run tests/peers/buildah.sh with these arguments and capture its output."""
    return subprocess.run(["bash", str(PEER), *args], capture_output=True, text=True, timeout=timeout)


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """podman with the peer script's storage and runtime settings."""
    return buildah_sh("podman", *args, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from the Containerfile (cached layers make re-builds quick)."""
    ready = buildah_sh("check")
    if ready.returncode != 0:
        missing_peer("buildah", ready.stderr.strip().splitlines()[-1] if ready.stderr.strip() else "not installed")
    built = buildah_sh("build", TAG, timeout=1200)
    assert built.returncode == 0, f"building the image failed:\n{built.stderr[-4000:]}"
    return TAG


@pytest.fixture
def volumes(tmp_path: Path) -> dict[str, Path]:
    """Host directories for the data volume and /tmp, owned by the image's user (as fsGroup does)."""
    dirs = {"data": tmp_path / "data", "tmp": tmp_path / "tmp"}
    for path in dirs.values():
        path.mkdir()
        shutil.chown(path, 10001, 10001)
    return dirs


def chart_like_run(image: str, volumes: dict[str, Path], *args: str, detach: bool = False, name: str | None = None,
                   entrypoint: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`podman run` with the chart's pod and container securityContext and volumes."""
    options = [f"--entrypoint={entrypoint}"] if entrypoint else []
    options += ["--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL", "--security-opt=no-new-privileges",
               "--network=host", f"--volume={volumes['data']}:/var/lib/kiln", f"--volume={volumes['tmp']}:/tmp",
               f"--env=KILN_SECRET_KEY={SECRET_KEY}"]
    options += ["--detach", f"--name={name}"] if detach else ["--rm"]
    return podman("run", *options, image, *args, timeout=timeout)


def image_config(image: str) -> dict:
    """The image's OCI/Docker config (User, Entrypoint, Cmd, Env, ...)."""
    inspected = podman("image", "inspect", image)
    assert inspected.returncode == 0, inspected.stderr
    return json.loads(inspected.stdout)[0]["Config"]


def test_image_matches_what_the_chart_runs(image: str, helm: str, tmp_path: Path) -> None:  # noqa: F811
    config = image_config(image)
    objects = render(helm, tmp_path)
    api_pod = deployment(objects, "api")["spec"]["template"]["spec"]
    assert config["Entrypoint"] == ["kiln"]
    assert config["Cmd"] == api_pod["containers"][0]["args"]  # the default CMD is the api's
    security = api_pod["securityContext"]
    assert config["User"] == f"{security['runAsUser']}:{security['runAsGroup']}"
    env = dict(item.split("=", 1) for item in config["Env"])
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    mounts = {m["name"]: m["mountPath"] for m in api_pod["containers"][0]["volumeMounts"]}
    assert env["KILN_DATA_DIR"] == configmap["data"]["KILN_DATA_DIR"] == mounts["data"]
    assert set(config["Volumes"]) == set(mounts.values())


def test_kiln_runs_as_the_non_root_user(image: str, volumes: dict[str, Path]) -> None:
    version = chart_like_run(image, volumes, "version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"kiln {__version__}"
    who = chart_like_run(image, volumes, entrypoint="id")  # no --user: the image's USER applies
    assert who.returncode == 0, who.stderr
    assert who.stdout.strip() == "uid=10001(kiln) gid=10001(kiln) groups=10001(kiln)"


def test_the_drivers_clients_are_installed(image: str, volumes: dict[str, Path]) -> None:
    """The Ironic and Metal3/Kubernetes clients (Kiln dependencies) are in the image."""
    probe = chart_like_run(image, volumes, "-c", "import openstack, kubernetes, kiln; print(kiln.__file__)",
                           entrypoint="python3")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "/opt/kiln/lib/python3.11/site-packages/kiln/__init__.py"


def test_the_charts_commands_exist_in_the_image(image: str, volumes: dict[str, Path], helm: str,  # noqa: F811
                                                tmp_path: Path) -> None:
    objects = render(helm, tmp_path)
    commands = {obj["spec"]["template"]["spec"]["containers"][0]["args"][0]
                for obj in objects if obj["kind"] in {"Deployment", "Job"}}
    assert commands == {"serve", "worker", "migrate"}
    for command in sorted(commands):
        result = chart_like_run(image, volumes, command, "--help")
        assert result.returncode == 0, f"kiln {command} --help: {result.stderr}"
        assert f"Usage: kiln {command}" in result.stdout


def test_api_serves_from_a_sqlite_data_volume(image: str, volumes: dict[str, Path]) -> None:
    migrated = chart_like_run(image, volumes, "migrate")  # what the chart's migration Job does
    assert migrated.returncode == 0, migrated.stderr
    database = volumes["data"] / "kiln.db"
    assert database.stat().st_uid == 10001 and database.stat().st_size > 0
    port, name = free_port(), f"kiln-test-{uuid.uuid4().hex[:8]}"
    started = chart_like_run(image, volumes, "serve", "--host", "127.0.0.1", "--port", str(port),
                             detach=True, name=name)
    assert started.returncode == 0, started.stderr
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for_health(base, name) == {"status": "ok"}
        ready = httpx.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        css = httpx.get(f"{base}/assets/console.css", timeout=5)  # package data made it into the wheel
        assert css.status_code == 200 and "text/css" in css.headers["content-type"]
        assert httpx.get(f"{base}/api/v1/tenants", timeout=5).status_code == 401
    finally:
        logs = podman("logs", name).stdout
        podman("rm", "--force", name)
    assert f"Kiln {__version__} serving on http://127.0.0.1:{port}" in logs


def wait_for_health(base: str, container: str, timeout: float = 60) -> dict:
    """/healthz's JSON once the container's API answers; fails with the container's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base}/healthz", timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    logs = podman("logs", container)
    pytest.fail(f"the containerised API never answered /healthz:\n{logs.stdout}{logs.stderr}")


@pytest.fixture(scope="module", autouse=True)
def no_leftover_containers() -> Iterator[None]:
    """Containers a failed test left behind are removed with the module."""
    yield
    listed = podman("ps", "--all", "--filter", "name=kiln-test-", "--format", "{{.Names}}")
    for name in listed.stdout.split():
        podman("rm", "--force", name)
