"""BMC addresses, parsed and checked: `ipmi://HOST[:PORT]`, or `redfish://HOST[:PORT][/SYSTEM-PATH]`
(HTTPS, the system's path as Ironic's `redfish_system_id` and Metal3 take it) with the
`redfish+https://` and `redfish+http://` spellings Metal3 uses to pick the transport
(`redfish+http` for plain-HTTP emulators and lab BMCs). Without a system path, the BMC's only
ComputerSystem is meant; `discover_redfish_system` asks the BMC which one that is."""

from __future__ import annotations

import re
from collections.abc import Mapping
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
    expected = "expected ipmi://HOST[:PORT] or redfish[+http|+https]://HOST[:PORT][/SYSTEM-PATH]"
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
    if driver == "redfish" and parts.path not in {"", "/"} and not parts.path.startswith("/redfish/v1/Systems/"):
        raise ValueError(f"Redfish BMC address {text!r}: its path must be a system's, e.g. "
                         "redfish://HOST/redfish/v1/Systems/1 (or none: the BMC's only system)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"BMC address {text!r} must not carry credentials, a query or a fragment")
    if driver == "redfish":
        return BmcAddress(driver, host, port, parts.path.rstrip("/"), REDFISH_TRANSPORTS[parts.scheme])
    return BmcAddress(driver, host, port)


def parse_redfish_address(text: str) -> BmcAddress:
    """Parse a node's second, collection-only address: a Redfish one only (ValueError otherwise)."""
    address = parse_bmc_address(text)
    if address.driver != "redfish":
        raise ValueError(f"second BMC address {text!r} must be a Redfish address: "
                         "expected redfish[+http|+https]://HOST[:PORT][/SYSTEM-PATH]")
    return address


def _valid_host(host: str) -> bool:
    return is_ip_address(host) or bool(_HOSTNAME.match(host))


def discover_redfish_system(address: BmcAddress, username: str | None, password: str | None, *,
                            verify: bool = True, timeout: float = 10.0) -> str:
    """The path of the only ComputerSystem behind a Redfish BMC (`GET /redfish/v1/Systems`).

    ValueError, readable as it is (never the password), when the BMC cannot be asked, refuses
    the credentials, or manages no system or several (they are listed: put one in the address).
    """
    import httpx  # here: list commands that import this module need no HTTP client

    url = f"{address.base_url}/redfish/v1/Systems"
    auth = (username or "", password or "") if username or password else None
    try:
        with httpx.Client(auth=auth, verify=verify, timeout=timeout) as client:
            answer = client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise ValueError(f"could not ask {url} which system to use: {type(exc).__name__}: {exc}") from exc
    if answer.status_code == 401:
        raise ValueError(f"{url} refused the BMC username/password (HTTP 401)")
    if answer.status_code != 200:
        raise ValueError(f"{url} answered HTTP {answer.status_code}")
    try:
        members = [m["@odata.id"] for m in answer.json()["Members"] if isinstance(m, Mapping)]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{url} did not answer a Redfish system collection") from exc
    if len(members) != 1:
        found = ", ".join(members) or "none"
        raise ValueError(f"{url} lists {len(members)} systems ({found}): give the one to use in the address, "
                         f"e.g. redfish://HOST{members[0] if members else '/redfish/v1/Systems/ID'}")
    return members[0].rstrip("/")
