"""NVIDIA GPUs through dcgm-exporter's series in Prometheus.

Metric names are dcgm-exporter's (`etc/default-counters.csv`, plus the profiling field
`DCGM_FI_PROF_GR_ENGINE_ACTIVE`, the activity measure that still works under MIG). The
host label is `Hostname` before dcgm-exporter 4.x and `hostname` after
(NVIDIA/dcgm-exporter#655); both are read, the new spelling first. A GPU is its `UUID`.
GPU-hours count `DCGM_FI_DEV_GPU_UTIL` samples (one per GPU per scrape, with `namespace`,
`pod`, `container` while a pod holds the GPU).

    client = PrometheusClient("http://prometheus:9090")
    DcgmCollector(client).collect()
    dcgm_usage(client, scrape_interval=timedelta(seconds=30)).gpu_hours_by_namespace(start, end)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from collectors.prometheus import (
    ExporterMetric,
    GpuCollector,
    GpuExporter,
    GpuUsage,
    PrometheusClient,
)

MIB = 1024 * 1024

DCGM_METRICS = (
    ExporterMetric("DCGM_FI_DEV_GPU_UTIL", "gpu_util", "percent"),
    ExporterMetric("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gpu_engine_active", "percent", 100.0),  # ratio 0-1
    ExporterMetric("DCGM_FI_DEV_FB_USED", "gpu_memory_used", "bytes", MIB),  # MiB
    ExporterMetric("DCGM_FI_DEV_FB_FREE", "gpu_memory_free", "bytes", MIB),  # MiB
    ExporterMetric("DCGM_FI_DEV_POWER_USAGE", "gpu_power", "watts"),
    ExporterMetric("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "gpu_energy", "joules", 1e-3),  # mJ since boot
    ExporterMetric("DCGM_FI_DEV_GPU_TEMP", "gpu_temperature", "celsius"),
    ExporterMetric("DCGM_FI_DEV_MEMORY_TEMP", "gpu_memory_temperature", "celsius"),
    ExporterMetric("DCGM_FI_DEV_XID_ERRORS", "gpu_last_xid", "code"),  # value of the last XID error
)

DCGM = GpuExporter(
    source="dcgm",
    metrics=DCGM_METRICS,
    presence="DCGM_FI_DEV_GPU_UTIL",
    entity_label="UUID",
    host_labels=("hostname", "Hostname"),
    instance_label="GPU_I_ID",  # MIG instance; absent on whole GPUs
    keep_labels=("gpu", "device", "modelName", "pci_bus_id", "GPU_I_ID", "GPU_I_PROFILE", "namespace", "pod",
                 "container"),
)


class DcgmCollector(GpuCollector):
    """Current values of every NVIDIA GPU that dcgm-exporter reports to Prometheus."""

    def __init__(self, client: PrometheusClient, *, clock: Callable[[], datetime] | None = None,
                 lookback: timedelta = timedelta(minutes=5)) -> None:
        super().__init__(client, DCGM, clock=clock, lookback=lookback)


def dcgm_usage(client: PrometheusClient, *, scrape_interval: timedelta) -> GpuUsage:
    """Metering queries (GPU-hours, utilisation per namespace or host) over NVIDIA GPUs;
    `scrape_interval` is how often Prometheus scrapes dcgm-exporter."""
    return GpuUsage(client, DCGM, scrape_interval=scrape_interval)
