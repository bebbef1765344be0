"""Which driver serves which provisioner, built once from settings."""

from __future__ import annotations

import threading

from fleet.provisioning.base import ProvisioningDriver
from fleet.provisioning.fake import FakeDriver
from kiln.errors import BadRequest
from kiln.settings import Settings


class Drivers:
    """The drivers of one Kiln process; real ones are constructed on first use."""

    def __init__(self, settings: Settings, fake: FakeDriver | None = None):
        self._settings = settings
        self._drivers: dict[str, ProvisioningDriver] = {"fake": fake or FakeDriver()}
        self._lock = threading.Lock()

    def get(self, provisioner: str) -> ProvisioningDriver:
        """The driver for `provisioner`; BadRequest saying how to configure a missing one."""
        with self._lock:
            if provisioner not in self._drivers:
                self._drivers[provisioner] = self._build(provisioner)
            return self._drivers[provisioner]

    def configured(self) -> list[str]:
        """Names of the provisioners this process can use."""
        names = ["fake"]
        if self._settings.ironic_url:
            names.append("ironic")
        if self._settings.kubeconfig:
            names.append("metal3")
        return names

    def _build(self, provisioner: str) -> ProvisioningDriver:
        if provisioner == "ironic":
            if not self._settings.ironic_url:
                raise BadRequest("provisioner 'ironic' is not configured: set KILN_IRONIC_URL to the Ironic API endpoint")
            from fleet.provisioning.ironic import IronicDriver  # imported when used: openstacksdk loads slowly

            return IronicDriver(self._settings.ironic_url, redfish_verify_tls=self._settings.redfish_verify_tls)
        if provisioner == "metal3":
            if not self._settings.kubeconfig:
                raise BadRequest("provisioner 'metal3' is not configured: set KILN_KUBECONFIG to a kubeconfig file")
            from fleet.provisioning.metal3 import Metal3Driver

            return Metal3Driver(self._settings.kubeconfig, namespace=self._settings.metal3_namespace)
        raise BadRequest(f"unknown provisioner {provisioner!r}: use ironic, metal3 or fake")
