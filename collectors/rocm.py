"""AMD GPUs through the ROCm device-metrics-exporter's series in Prometheus.

Metric names are the exporter's (docs/configuration/metricslist.md, lower-cased as it
exports them); a GPU is its `serial_number`, or its `gpu_uuid` where the serial is empty (with
`gpu_id`, `card_model` and the partition labels kept), the host label is `hostname`. GPU-hours count `gpu_gfx_activity` samples (one
per GPU per scrape, with `namespace`, `pod`, `container` while a pod holds the GPU). MI3xx
report junction temperature and package power, MI2xx edge temperature and average package power
(metricslist.md's "MI2xx-Only" / "MI3xx-Only" lists): whichever exists.

    RocmCollector(PrometheusClient("http://prometheus:9090")).collect()
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from collectors.gpu_usage import GpuUsage
from collectors.prometheus import (
    ExporterMetric,
    GpuCollector,
    GpuExporter,
    PrometheusClient,
)

MIB = 1024 * 1024  # the exporter's "MB" are MiB (an MI300X reports 196592 of them)

ROCM_METRICS = (
    ExporterMetric("gpu_gfx_activity", "gpu_util", "percent"),
    ExporterMetric("gpu_used_vram", "gpu_memory_used", "bytes", MIB),
    ExporterMetric("gpu_free_vram", "gpu_memory_free", "bytes", MIB),
    ExporterMetric("gpu_total_vram", "gpu_memory_total", "bytes", MIB),
    ExporterMetric("gpu_power_usage", "gpu_power", "watts", whole_gpu=True),
    ExporterMetric("gpu_package_power", "gpu_package_power", "watts", whole_gpu=True),  # MI3xx: current socket power
    ExporterMetric("gpu_average_package_power", "gpu_package_power", "watts", whole_gpu=True),  # MI2xx: average
    ExporterMetric("gpu_energy_consumed", "gpu_energy", "joules", 1e-6, whole_gpu=True),  # µJ, accumulated
    ExporterMetric("gpu_junction_temperature", "gpu_temperature", "celsius", whole_gpu=True),  # hotspot (MI3xx)
    ExporterMetric("gpu_edge_temperature", "gpu_edge_temperature", "celsius", whole_gpu=True),  # MI2xx
    ExporterMetric("gpu_memory_temperature", "gpu_memory_temperature", "celsius", whole_gpu=True),
    ExporterMetric("gpu_ecc_uncorrect_total", "gpu_ecc_uncorrectable", "count"),
)

ROCM = GpuExporter(
    source="rocm",
    metrics=ROCM_METRICS,
    presence="gpu_gfx_activity",
    # serial_number is empty on virtual functions and on some MI325X hosts (device-metrics-exporter
    # PRs #201/#202, issue #171): the GPU's UUID identifies it there; an all-zero UUID identifies nothing
    entity_labels=("serial_number", "gpu_uuid"),
    no_identity=frozenset({"00000000-0000-0000-0000-000000000000"}),
    host_labels=("hostname",),
    # compute partitions (CPX, ...); an unpartitioned GPU says "0", "NA" (no partition reported)
    # or 4294967295 (-1 as an unsigned 32-bit id, seen on virtual functions)
    instance_label="gpu_partition_id",
    whole_gpu_instances=frozenset({"0", "NA", "4294967295"}),
    # every partition carries its GPU's serial_number (gpuagent_gpu_metrics.go): partition 0 is the
    # whole GPU only in SPX mode (or where the mode is not reported)
    partition_mode_label="gpu_compute_partition_type",
    whole_gpu_modes=frozenset({"spx"}),
    instance_detail_labels=("gpu_compute_partition_type",),
    keep_labels=("gpu_id", "card_model", "gpu_partition_id", "gpu_compute_partition_type"),
)


class RocmCollector(GpuCollector):
    """Current values of every AMD GPU that the device-metrics-exporter reports to Prometheus."""

    def __init__(self, client: PrometheusClient, *, clock: Callable[[], datetime] | None = None,
                 lookback: timedelta = timedelta(minutes=5)) -> None:
        super().__init__(client, ROCM, clock=clock, lookback=lookback)


def rocm_usage(client: PrometheusClient, *, scrape_interval: timedelta) -> GpuUsage:
    """Metering queries (GPU-hours, utilisation per namespace or host) over AMD GPUs;
    `scrape_interval` is how often Prometheus scrapes the exporter."""
    return GpuUsage(client, ROCM, scrape_interval=scrape_interval)
