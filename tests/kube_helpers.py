"""Helpers for tests against the real kube-apiserver peer (tests/peers/kube.sh)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml


def install_crd(api: Any, manifest: Path, timeout_s: float = 30) -> None:
    """Create the CustomResourceDefinition in `manifest` and wait until the apiserver serves it
    (condition Established), failing the test after `timeout_s`."""
    from kubernetes import client as k8s

    extensions = k8s.ApiextensionsV1Api(api)
    created = extensions.create_custom_resource_definition(yaml.safe_load(manifest.read_text()))
    name = created.metadata.name
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        crd = extensions.read_custom_resource_definition(name)
        if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
            return
        time.sleep(0.1)
    pytest.fail(f"CRD {name} never became Established")
