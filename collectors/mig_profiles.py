"""NVIDIA MIG profiles and their compute fractions, from NVIDIA's MIG user guide.

Source: NVIDIA Multi-Instance GPU User Guide, "Supported MIG Profiles"
(https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html), whose
tables give each profile's "Fraction of SMs". A profile `<g>g.<mem>gb` holds `g` compute slices
of the GPU's total (7 on A100, H100 and H200; 4 on A30), so its compute fraction is g / total —
e.g. `3g.40gb` on an H100 80GB is 3/7 of the GPU, `1g.20gb` 1/7 (more memory, same SMs), and
`4g.40gb` 4/7. `+me` (media extensions) profiles have their base profile's SMs.

Kubernetes names them `nvidia.com/mig-<profile>` (the device plugin's "mixed" strategy).
Kiln meters a MIG instance in GPU-hours of its GPU: an hour of a `3g.40gb` instance is 3/7 of a
GPU-hour (`metering.gpu_shares`), so instances and idle slices add up to the GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

RESOURCE_PREFIX = "nvidia.com/mig-"
PROFILE_PATTERN = re.compile(r"^(?P<slices>[1-7])g\.(?P<memory>\d+)gb(?P<media>\+me)?$")
DEFAULT_TOTAL_SLICES = 7  # every MIG-capable GPU in the guide but the A30


@dataclass(frozen=True)
class MigFamily:
    """One GPU product's MIG geometry: how its model is recognised, its compute slices, its profiles."""

    name: str
    model_pattern: re.Pattern[str]
    total_slices: int
    profiles: tuple[str, ...]


def _family(name: str, pattern: str, total: int, profiles: str) -> MigFamily:
    return MigFamily(name, re.compile(pattern, re.IGNORECASE), total, tuple(profiles.split()))


# Most specific first: a model name is matched against each pattern in turn.
FAMILIES: tuple[MigFamily, ...] = (
    _family("A30 24GB", r"\bA30\b", 4, "1g.6gb 1g.6gb+me 2g.12gb 2g.12gb+me 4g.24gb"),
    _family("A100 40GB", r"\bA100\b.*\b40\s?GB\b", 7, "1g.5gb 1g.5gb+me 1g.10gb 2g.10gb 3g.20gb 4g.20gb 7g.40gb"),
    _family("A100 80GB", r"\bA100\b.*\b80\s?GB\b", 7, "1g.10gb 1g.10gb+me 1g.20gb 2g.20gb 3g.40gb 4g.40gb 7g.80gb"),
    _family("H100 94GB", r"\bH100\b.*\b(94\s?GB|NVL)\b", 7,
            "1g.12gb 1g.12gb+me 1g.24gb 2g.24gb 3g.47gb 4g.47gb 7g.94gb"),
    _family("H100 80GB", r"\bH100\b", 7, "1g.10gb 1g.10gb+me 1g.20gb 2g.20gb 3g.40gb 4g.40gb 7g.80gb"),
    _family("H200 141GB", r"\bH200\b", 7, "1g.18gb 1g.18gb+me 1g.35gb 2g.35gb 3g.71gb 4g.71gb 7g.141gb"),
)


def is_mig_resource(resource: str) -> bool:
    """Whether a Kubernetes extended resource names a MIG profile (`nvidia.com/mig-1g.10gb`)."""
    return resource.startswith(RESOURCE_PREFIX) and PROFILE_PATTERN.match(resource[len(RESOURCE_PREFIX):]) is not None


def profile_of(resource: str) -> str:
    """The MIG profile a `nvidia.com/mig-<profile>` resource names (`1g.10gb`); ValueError otherwise."""
    if not is_mig_resource(resource):
        raise ValueError(f"{resource!r} is not a MIG resource (nvidia.com/mig-<g>g.<memory>gb)")
    return resource[len(RESOURCE_PREFIX):]


def family_of(model: str) -> MigFamily | None:
    """The MIG family of a GPU model name (`NVIDIA A100-SXM4-80GB` → A100 80GB), None if not in the table."""
    return next((family for family in FAMILIES if family.model_pattern.search(model or "")), None)


def total_slices(model: str) -> int:
    """Compute slices of a whole GPU of `model` (7 where the model is not in the table)."""
    family = family_of(model)
    return family.total_slices if family else DEFAULT_TOTAL_SLICES


def profile_slices(profile: str) -> int:
    """Compute slices of a MIG profile (`3g.40gb` → 3); ValueError for a name that is not a profile."""
    match = PROFILE_PATTERN.match(profile)
    if not match:
        raise ValueError(f"{profile!r} is not a MIG profile name (<g>g.<memory>gb, e.g. 1g.10gb)")
    return int(match["slices"])


def compute_fraction(model: str, profile: str) -> Fraction:
    """The part of a `model` GPU one `profile` instance is (slices ÷ the GPU's slices), exactly."""
    return Fraction(min(profile_slices(profile), total_slices(model)), total_slices(model))


def known_profile(model: str, profile: str) -> bool:
    """Whether NVIDIA's table lists `profile` for `model` (unknown models: any well-formed profile)."""
    family = family_of(model)
    return profile in family.profiles if family else PROFILE_PATTERN.match(profile) is not None
