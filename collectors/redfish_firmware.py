"""Redfish firmware inventory: what firmware a node runs, from `UpdateService/FirmwareInventory`.

Read on every Redfish poll (collectors/redfish.py calls `firmware_samples`): the service root's
`UpdateService`, its `FirmwareInventory` collection (every page), then each member (a SoftwareInventory,
DMTF DSP8010). Each member becomes one `redfish_firmware_info` sample (value 1, unit `info`)
whose labels carry the facts, the way `ipmi_bmc_info` does; collectors/store.py turns a poll's
samples into `node.facts["firmware"]`.

| label | from the member |
| --- | --- |
| `id` | `Id` (the Redfish name of the component, e.g. `BMC`, `HGX_FW_GPU_0`) |
| `component` | the normalised kind, see below |
| `name`, `version`, `manufacturer`, `software_id` | `Name`, `Version`, `Manufacturer`, `SoftwareId` ('' when absent) |
| `updateable` | `Updateable`: `true`, `false` or '' |
| `state`, `health` | `Status.State`, `Status.Health` |
| `related` | the `@odata.id`s of `RelatedItem`, comma-separated |

**Component names** are normalised to a small vocabulary, `bmc`, `bios`, `gpu`, `nic`, `other`,
by the first rule of `COMPONENT_RULES` that matches: a root of trust (`RoT`, `ERoT`, `IRoT` in
the Id or Name) is `other`; a member whose `RelatedItem` is a Manager is `bmc`, a ComputerSystem
itself `bios`, a NetworkAdapter `nic`; else words in the Id or Name (`GPU` → gpu; `NIC`,
`Network`, `Ethernet`, `ConnectX`, `InfiniBand` → nic; `BMC`, `iDRAC`, `iLO`, `XCC` → bmc;
`BIOS`, `UEFI`, `System ROM` → bios); everything else is `other`. The Redfish `Id` is always
kept beside it, so a baseline can also name one component exactly.

No `UpdateService` link in the service root means no inventory (not an error); an
UpdateService or collection that fails is raised as the caller's error type; a member that
cannot be read is left out and counted in `skipped`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from collectors.base import Sample
from collectors.redfish_http import collection_pages

FIRMWARE_METRIC = "redfish_firmware_info"
COMPONENTS = ("bmc", "bios", "gpu", "nic", "other")
SYSTEM_PATH = re.compile(r"/Systems/[^/]+/?$")
# (component, where to look, pattern), first match wins: "text" is "Id Name", "related" each RelatedItem path
COMPONENT_RULES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("other", "text", re.compile(r"(\b|_|-)[EI]?RoT", re.IGNORECASE)),
    ("bmc", "related", re.compile(r"/Managers/[^/]+/?$")),
    ("bios", "related", SYSTEM_PATH),
    ("nic", "related", re.compile(r"/NetworkAdapters/")),
    ("gpu", "text", re.compile(r"gpu", re.IGNORECASE)),
    ("nic", "text", re.compile(r"(\b|_)nic|network|ethernet|connectx|infiniband", re.IGNORECASE)),
    ("bmc", "text", re.compile(r"bmc|idrac|(\b|_)ilo(\b|_)|(\b|_)xcc(\b|_)", re.IGNORECASE)),
    ("bios", "text", re.compile(r"bios|uefi|system rom", re.IGNORECASE)),
)
Getter = Callable[[str], Mapping[str, Any]]


def component_of(member: Mapping[str, Any]) -> str:
    """The normalised kind (`bmc`, `bios`, `gpu`, `nic`, `other`) of a SoftwareInventory member."""
    text = f"{member.get('Id') or ''} {member.get('Name') or ''}"
    related = related_paths(member)
    for component, where, pattern in COMPONENT_RULES:
        if (where == "text" and pattern.search(text)) or (where == "related" and any(map(pattern.search, related))):
            return component
    return "other"


def related_paths(member: Mapping[str, Any]) -> list[str]:
    """The `@odata.id` of each `RelatedItem` entry of a member."""
    items = member.get("RelatedItem") or []
    return [str(item["@odata.id"]) for item in items if isinstance(item, Mapping) and item.get("@odata.id")]


def firmware_labels(member: Mapping[str, Any]) -> dict[str, str]:
    """The labels of a member's `redfish_firmware_info` sample (see the module docstring)."""
    status = member.get("Status") if isinstance(member.get("Status"), Mapping) else {}
    updateable = member.get("Updateable")
    return {
        "id": str(member.get("Id") or ""),
        "component": component_of(member),
        "name": str(member.get("Name") or ""),
        "version": str(member.get("Version") or ""),
        "manufacturer": str(member.get("Manufacturer") or ""),
        "software_id": str(member.get("SoftwareId") or ""),
        "updateable": "" if updateable is None else str(bool(updateable)).lower(),
        "state": str(status.get("State") or ""),
        "health": str(status.get("Health") or ""),
        "related": ",".join(related_paths(member)),
    }


def firmware_samples(get: Getter, root: Mapping[str, Any], node: str, source: str, now: datetime,
                     skipped: dict[str, int], errors: tuple[type[Exception], ...]) -> list[Sample]:
    """One `redfish_firmware_info` sample per FirmwareInventory member, read with `get(path)`.

    `get` raises one of `errors` for a resource it cannot read: for the UpdateService or the
    collection that error propagates; for a member it is counted in `skipped`.
    """
    link = (root.get("UpdateService") or {}).get("@odata.id")
    if not link:
        return []
    inventory = (get(link).get("FirmwareInventory") or {}).get("@odata.id")
    if not inventory:
        return []
    out: list[Sample] = []
    for entry in (member for page in collection_pages(get, inventory) for member in page):
        path = entry.get("@odata.id")
        try:
            member = get(path) if path else None
        except errors:
            member = None
        if not member or not member.get("Id"):
            skipped["unreadable firmware member"] = skipped.get("unreadable firmware member", 0) + 1
            continue
        out.append(Sample(source, node, FIRMWARE_METRIC, 1.0, "info", firmware_labels(member), now))
    return out
