"""BMC addresses, parsed and checked: `ipmi://HOST[:PORT]`, or `redfish://HOST[:PORT]/SYSTEM-PATH`
(HTTPS, the system's path as Ironic's `redfish_system_id` and Metal3 take it) with the
`redfish+https://` and `redfish+http://` spellings Metal3 uses to pick the transport
(`redfish+http` for plain-HTTP emulators and lab BMCs)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from kiln.validation import is_ip_address

IPMI_DEFAULT_PORT = 623
REDFISH_TRANSPORTS = {"redfish": "https", "redfish+https": "https", "redfish+http": "http"}  # scheme -> transport
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


@dataclass(frozen=True)
class BmcAddress:
    """A parsed BMC address."""

    driver: str  # ipmi | redfish
    host: str
    port: int | None
    path: str = ""
    transport: str = ""  # Redfish only: https | http

    @property
    def base_url(self) -> str:
        """A Redfish address's service URL without the path (`https://HOST[:PORT]`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport or 'https'}://{host}" + (f":{self.port}" if self.port else "")

    @property
    def effective_port(self) -> int:
        """The port to connect to (IPMI's 623, HTTPS's 443 or HTTP's 80 when none is given)."""
        return self.port or (IPMI_DEFAULT_PORT if self.driver == "ipmi" else 80 if self.transport == "http" else 443)


def parse_bmc_address(text: str) -> BmcAddress:
    """Parse and validate a BMC address; ValueError says what is wrong and what is expected."""
    expected = "expected ipmi://HOST[:PORT] or redfish[+http|+https]://HOST[:PORT]/SYSTEM-PATH"
    parts = urlsplit(text.strip())
    if parts.scheme not in REDFISH_TRANSPORTS and parts.scheme != "ipmi":
        raise ValueError(f"unsupported BMC address {text!r}: {expected}")
    driver = "ipmi" if parts.scheme == "ipmi" else "redfish"
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"BMC address {text!r} has an invalid port: {expected}") from None
    host = parts.hostname or ""
    if not host or not _valid_host(host):
        raise ValueError(f"BMC address {text!r} has no valid host: {expected}")
    if parts.scheme == "ipmi" and parts.path not in {"", "/"}:
        raise ValueError(f"IPMI BMC address {text!r} cannot have a path: expected ipmi://HOST[:PORT]")
    if driver == "redfish" and parts.path in {"", "/"}:
        raise ValueError(f"Redfish BMC address {text!r} needs the system path, e.g. redfish://HOST/redfish/v1/Systems/1")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"BMC address {text!r} must not carry credentials, a query or a fragment")
    if driver == "redfish":
        return BmcAddress(driver, host, port, parts.path, REDFISH_TRANSPORTS[parts.scheme])
    return BmcAddress(driver, host, port)


def _valid_host(host: str) -> bool:
    return is_ip_address(host) or bool(_HOSTNAME.match(host))
