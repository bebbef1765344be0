"""Human names for SKUs, for people reading bills and charts (the SKU itself stays the key).

`label("gpu-hour:NVIDIA H100 80GB HBM3")` is "GPU-hour · NVIDIA H100 80GB HBM3", `label("kwh")` is
"Energy (kWh)". A qualifier after the model (a MIG profile: `gpu-hour:<model>:3g.40gb`) reads
"GPU-hour · <model> · 3g.40gb". An SKU of an unknown family is shown as it is.
"""

from __future__ import annotations

from metering import skus

FAMILY_LABELS = {
    skus.NODE_HOUR: "Node-hour",
    skus.GPU_HOUR: "GPU-hour",
    skus.CPU_CORE_HOUR: "CPU core-hour",
    skus.RAM_GIB_HOUR: "Memory GiB-hour",
    skus.KWH: "Energy (kWh)",
    skus.STORAGE_GIB_MONTH: "Storage GiB-month",
    skus.IDLE_SHARE: "Share of idle capacity",
}
DEFAULT_QUALIFIER = "default"  # `node-hour:default`: a node without a resource class


def label(sku: str) -> str:
    """The SKU's human name: its family's name, then its qualifier (GPU model, resource class)."""
    family, _, qualifier = sku.partition(":")
    name = FAMILY_LABELS.get(family)
    if name is None:
        return sku
    if not qualifier or qualifier == DEFAULT_QUALIFIER:
        return name
    return " · ".join([name, *qualifier.split(":")])
