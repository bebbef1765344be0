"""SKU names and their units: what a price card prices and a usage record counts.

| SKU | unit | counts |
| --- | --- | --- |
| `node-hour:<resource_class>` | `Hours` | a leased bare-metal node for an hour |
| `gpu-hour:<gpu model>` | `GPU-Hours` | one GPU (of a leased node, or requested by a pod) for an hour |
| `gpu-hour:<gpu model>:<MIG profile>` | `GPU-Hours` | a MIG instance, in its GPU's hours: an hour of a `3g.40gb` instance of an H100 is 3/7 GPU-hour (`collectors.mig_profiles`); priced by the model's card unless this SKU has one |
| `cpu-core-hour` | `Core-Hours` | one requested CPU core for an hour (Kubernetes) |
| `ram-gib-hour` | `GiB-Hours` | one requested GiB of memory for an hour (Kubernetes) |
| `kwh` | `kWh` | metered energy of a node (BMC power integrated per hour) |
| `storage-gib-month` | `GiB-Months` | storage, per GiB and month (no usage source yet: never charged) |

Units follow FOCUS 1.2's UnitFormat (they become PricingUnit and ConsumedUnit in exports).

A node without a resource class is `node-hour:default`.
"""

from __future__ import annotations

import re

from collectors.mig_profiles import PROFILE_PATTERN

NODE_HOUR = "node-hour"
GPU_HOUR = "gpu-hour"
CPU_CORE_HOUR = "cpu-core-hour"
RAM_GIB_HOUR = "ram-gib-hour"
KWH = "kwh"
STORAGE_GIB_MONTH = "storage-gib-month"
IDLE_SHARE = "idle-share"

UNITS = {  # FOCUS 1.2 UnitFormat, so PricingUnit and ConsumedUnit pass the validator's format rule
    NODE_HOUR: "Hours",
    GPU_HOUR: "GPU-Hours",
    CPU_CORE_HOUR: "Core-Hours",
    RAM_GIB_HOUR: "GiB-Hours",
    KWH: "kWh",
    STORAGE_GIB_MONTH: "GiB-Months",
    IDLE_SHARE: "Share",
}
PARAMETRISED = frozenset({NODE_HOUR, GPU_HOUR})  # these take `:<qualifier>`
SKU_PATTERN = re.compile(r"^(?P<family>[a-z0-9-]+)(:(?P<qualifier>[^\s,:][^,]{0,110}))?$")


def node_hour(resource_class: str | None) -> str:
    """The SKU of a node-hour of this resource class."""
    return f"{NODE_HOUR}:{resource_class or 'default'}"


def gpu_hour(model: str, profile: str | None = None) -> str:
    """The SKU of a GPU-hour of this GPU model (e.g. `gpu-hour:NVIDIA H100 80GB HBM3`), or of a
    MIG profile of it (`gpu-hour:NVIDIA H100 80GB HBM3:3g.40gb`)."""
    return f"{GPU_HOUR}:{model}:{profile}" if profile else f"{GPU_HOUR}:{model}"


def whole_gpu_sku(sku: str) -> str:
    """The whole GPU's SKU of a MIG profile's (`gpu-hour:<model>:<profile>` → `gpu-hour:<model>`);
    any other SKU unchanged. MIG usage is counted in the GPU's hours, so it takes from that capacity
    and is priced by that card unless the profile has a card of its own."""
    if family(sku) == GPU_HOUR and sku.count(":") >= 2:
        parent, profile = sku.rsplit(":", 1)
        if PROFILE_PATTERN.match(profile):
            return parent
    return sku


def family(sku: str) -> str:
    """The SKU's family (`gpu-hour:H100` → `gpu-hour`)."""
    return sku.split(":", 1)[0]


def unit_of(sku: str) -> str:
    """The unit usage of this SKU is counted in."""
    return UNITS[family(sku)]


def check_sku(sku: str) -> str:
    """`sku` if it names a known family (with a qualifier where one is needed); ValueError otherwise."""
    match = SKU_PATTERN.match(sku or "")
    known = ", ".join(f"{f}:<…>" if f in PARAMETRISED else f for f in UNITS if f != IDLE_SHARE)
    if not match or match["family"] not in UNITS or match["family"] == IDLE_SHARE:
        raise ValueError(f"unknown SKU {sku!r} (known: {known})")
    if (match["family"] in PARAMETRISED) != bool(match["qualifier"]):
        need = "needs" if match["family"] in PARAMETRISED else "takes no"
        raise ValueError(f"SKU {sku!r}: {match['family']} {need} a ':<qualifier>' (known: {known})")
    return sku
