"""NVIDIA GPUs through dcgm-exporter's series in Prometheus.

Metric names are dcgm-exporter's (`etc/default-counters.csv`, plus the profiling field
`DCGM_FI_PROF_GR_ENGINE_ACTIVE`, the activity measure that still works under MIG). The
host label is `Hostname` before dcgm-exporter 4.x and `hostname` after
(NVIDIA/dcgm-exporter#655); both are read, the new spelling first. A GPU is its `UUID`.
GPU-hours count `DCGM_FI_DEV_GPU_UTIL` samples (one per GPU per scrape, with `namespace`,
`pod`, `container` while a pod holds the GPU). A MIG instance (`GPU_I_ID`, `GPU_I_PROFILE`) is
an entity `UUID/GPU_I_ID` with `parent_gpu` = UUID; its presence and utilisation are
`DCGM_FI_PROF_GR_ENGINE_ACTIVE`, and the whole-GPU fields its series repeat are the GPU's, once.

    client = PrometheusClient("http://prometheus:9090")
    DcgmCollector(client).collect()
    dcgm_usage(client, scrape_interval=timedelta(seconds=30)).gpu_hours_by_namespace(start, end)
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

MIB = 1024 * 1024
# DCGM's "no value" sentinels (NVIDIA/DCGM dcgmlib/dcgm_structs.h: DCGM_INT64_BLANK 0x7ffffffffffffff0
# and its NOT_FOUND/NOT_SUPPORTED/NOT_PERMISSIONED neighbours; DCGM_FP64_BLANK 140737488355328.0 = 2**47
# and its neighbours; DCGM_*_IS_BLANK(v) is v >= the blank). An exporter that passes one on (its
# README's sample shows DCGM_FI_DEV_MEMORY_TEMP 9223372036854775794) is reporting no reading.
INT64_BLANK = float(0x7FFFFFFFFFFFFFF0)
FP64_BLANK = 140737488355328.0

# whole_gpu: fields of the physical GPU, repeated by dcgm-exporter on each MIG instance's series
# (NVIDIA's MIG example repeats DCGM_FI_DEV_XID_ERRORS; power, energy and temperatures likewise)
DCGM_METRICS = (  # the blank that applies is the DCGM field's type: int64 or fp64
    ExporterMetric("DCGM_FI_DEV_GPU_UTIL", "gpu_util", "percent", blank_from=INT64_BLANK),
    ExporterMetric("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gpu_engine_active", "percent", 100.0, FP64_BLANK),  # ratio 0-1
    ExporterMetric("DCGM_FI_DEV_FB_USED", "gpu_memory_used", "bytes", MIB, INT64_BLANK),  # MiB
    ExporterMetric("DCGM_FI_DEV_FB_FREE", "gpu_memory_free", "bytes", MIB, INT64_BLANK),  # MiB
    ExporterMetric("DCGM_FI_DEV_POWER_USAGE", "gpu_power", "watts", blank_from=FP64_BLANK, whole_gpu=True),
    ExporterMetric("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "gpu_energy", "joules", 1e-3, INT64_BLANK, whole_gpu=True),  # mJ, counter
    ExporterMetric("DCGM_FI_DEV_GPU_TEMP", "gpu_temperature", "celsius", blank_from=INT64_BLANK, whole_gpu=True),
    ExporterMetric("DCGM_FI_DEV_MEMORY_TEMP", "gpu_memory_temperature", "celsius", blank_from=INT64_BLANK, whole_gpu=True),
    ExporterMetric("DCGM_FI_DEV_XID_ERRORS", "gpu_last_xid", "code", blank_from=INT64_BLANK, whole_gpu=True),  # the last XID error
)

DCGM = GpuExporter(
    source="dcgm",
    metrics=DCGM_METRICS,
    presence="DCGM_FI_DEV_GPU_UTIL",
    entity_labels=("UUID",),
    host_labels=("hostname", "Hostname"),
    instance_label="GPU_I_ID",  # MIG instance; absent on whole GPUs
    instance_detail_labels=("GPU_I_PROFILE",),
    # DCGM_FI_DEV_GPU_UTIL is not supported on MIG instances (absent, or 0: dcgm-exporter#105, #216);
    # NVIDIA's answer there is the profiling field
    instance_presence="DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    keep_labels=("gpu", "device", "modelName", "pci_bus_id", "GPU_I_ID", "GPU_I_PROFILE"),
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
