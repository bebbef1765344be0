"""Months of dcgm-exporter and AMD device-metrics-exporter history, backfilled into Prometheus.

A deterministic (seeded) fleet of N nodes × G GPUs over D days at fixed steps (5 min), with an
allocation schedule saying which namespace/pod held which GPU when, so tests know the exact
GPU-hours per namespace, per host and unallocated. Metric and label names are the exporters'
own:

- dcgm-exporter (`etc/default-counters.csv` + `DCGM_FI_PROF_GR_ENGINE_ACTIVE`): labels `gpu`,
  `UUID`, `pci_bus_id`, `device`, `modelName`, `Hostname` (before 4.x) or `hostname` (4.x,
  NVIDIA/dcgm-exporter#655), `DCGM_FI_DRIVER_VERSION`, and `container`, `namespace`, `pod`
  while a pod holds the GPU (absent otherwise: Prometheus drops empty labels).
- ROCm device-metrics-exporter: `gpu_gfx_activity`, `gpu_used_vram`, ... with labels
  `gpu_id`, `serial_number`, `card_model`, `hostname`, `gpu_partition_id`,
  `gpu_compute_partition_type`, and `namespace`, `pod`, `container` while allocated.

Each allocation is its own series (the exporter's pod labels change), so series churn like
the real thing. Every GPU has a sample of the "presence" metric (`DCGM_FI_DEV_GPU_UTIL`,
`gpu_gfx_activity`) at every step; the full metric set is written for the last
`detail_hours` only (what "current values" need), which keeps fixtures small. With
`malformed=True` the fleet also has: an allocation whose series has `pod` but no `namespace`,
a NaN utilisation sample, a GPU series without a host label, and a GPU without a `UUID`.

The history is written as OpenMetrics text (each family contiguous, each series' samples
contiguous and increasing, integer seconds, `# EOF`) in time-disjoint chunks and backfilled
with `promtool tsdb create-blocks-from openmetrics --max-block-duration=720h`, one chunk at a
time (promtool's memory grows with its input). Blocks are cached under
`~/.cache/kiln/prometheus-blocks/<hash of the parameters>/blocks`.

    python tests/peers/gpu_history.py --nodes 4 --gpus 8 --days 30 --amd-nodes 1   # prints the blocks dir
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

GENERATOR_VERSION = 1
SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # any change here: new blocks
CACHE_ROOT = Path(os.environ.get("KILN_CACHE_DIR", Path.home() / ".cache" / "kiln")) / "prometheus-blocks"
DEFAULT_END = 1748736000  # 2025-06-01T00:00:00Z: fixed, and far more than 3 h in the past
DAY_S = 86400
CHUNK_SAMPLES = 2_500_000  # samples per promtool run (under 1 GB of promtool RSS)

NVIDIA = "nvidia"
AMD = "amd"
PRESENCE_METRIC = {NVIDIA: "DCGM_FI_DEV_GPU_UTIL", AMD: "gpu_gfx_activity"}
NAMESPACES = ("team-vision", "team-llm", "acme-research", "batch-inference", "globex-ml")
NVIDIA_MODEL = "NVIDIA H100 80GB HBM3"
NVIDIA_FB_MIB = 81559
NVIDIA_DRIVER = "550.127.05"
AMD_MODEL = "AMD Instinct MI300X OAM"
AMD_VRAM_MB = 196592


@dataclass(frozen=True)
class FleetSpec:
    """The generator's parameters; equal specs give byte-identical history."""

    nodes: int = 4
    gpus_per_node: int = 8
    days: int = 30
    amd_nodes: int = 1  # the last `amd_nodes` nodes carry AMD GPUs
    legacy_hostname_every: int = 2  # NVIDIA node i labels `Hostname` (pre-4.x) when i % this == 0
    step_s: int = 300
    end: int = DEFAULT_END  # exclusive: the last sample is at end - step_s
    detail_hours: int = 6  # full metric set for this many hours before `end`
    namespaces: tuple[str, ...] = NAMESPACES
    malformed: bool = True
    seed: int = 1

    @property
    def steps(self) -> int:
        """Samples per GPU series over the whole history."""
        return self.days * DAY_S // self.step_s

    @property
    def start(self) -> int:
        """Timestamp (s) of the first sample."""
        return self.end - self.steps * self.step_s

    @property
    def steps_per_day(self) -> int:
        return DAY_S // self.step_s

    def ts(self, step: int) -> int:
        """Timestamp (s) of step `step`."""
        return self.start + step * self.step_s

    def cache_key(self) -> str:
        """Hash of the parameters and the generator version: the blocks' cache directory name."""
        blob = json.dumps({"v": GENERATOR_VERSION, "source": SOURCE_HASH, **dataclasses.asdict(self)},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Segment:
    """Steps [start, stop) of one GPU under one label set: a pod's allocation or idle time."""

    start: int
    stop: int
    namespace: str | None = None
    pod: str | None = None
    container: str | None = None
    nan_step: int | None = None  # the presence metric is NaN at this step
    k: int = 0  # value pattern offset

    @property
    def allocated(self) -> bool:
        return self.pod is not None


@dataclass(frozen=True)
class Gpu:
    """One GPU's identity, labels and allocation schedule."""

    vendor: str
    node: str | None  # host label value; None: the series carry no host label (malformed)
    host_label: str | None  # "Hostname", "hostname" or None
    index: int
    ident: str | None  # UUID (NVIDIA) or serial number (AMD); None: missing (malformed)
    segments: tuple[Segment, ...]

    def base_labels(self) -> str:
        """The exporter's identity labels of this GPU, rendered."""
        parts: list[str] = []
        if self.vendor == NVIDIA:
            parts.append(f'gpu="{self.index}"')
            if self.ident:
                parts.append(f'UUID="{self.ident}"')
            parts += [f'pci_bus_id="00000000:{0x18 + 16 * self.index:02X}:00.0"', f'device="nvidia{self.index}"',
                      f'modelName="{NVIDIA_MODEL}"']
            if self.host_label:
                parts.append(f'{self.host_label}="{self.node}"')
            parts.append(f'DCGM_FI_DRIVER_VERSION="{NVIDIA_DRIVER}"')
        else:
            parts += [f'card_model="{AMD_MODEL}"', 'gpu_compute_partition_type="spx"', f'gpu_id="{self.index}"',
                      'gpu_partition_id="0"']
            if self.host_label:
                parts.append(f'{self.host_label}="{self.node}"')
            if self.ident:
                parts.append(f'serial_number="{self.ident}"')
        return ",".join(parts)

    def series(self) -> list[tuple[str, list[Segment]]]:
        """(rendered labels, segments) per distinct label set, in order of first appearance."""
        base = self.base_labels()
        groups: dict[str, list[Segment]] = {}
        for seg in self.segments:
            extra = "".join(
                f',{name}="{value}"'
                for name, value in (("container", seg.container), ("namespace", seg.namespace), ("pod", seg.pod))
                if value is not None
            )
            groups.setdefault(base + extra, []).append(seg)
        return list(groups.items())


def util(seg: Segment, step: int) -> float:
    """The presence metric (utilisation, percent) of a segment at a step: integers, NaN once if asked."""
    if step == seg.nan_step:
        return float("nan")
    return float(30 + (seg.k + 13 * step) % 71) if seg.allocated else 0.0


def _schedule(rng: random.Random, spec: FleetSpec, tag: str) -> list[Segment]:
    segments: list[Segment] = []
    step = 0
    while step < spec.steps:
        if rng.random() < 0.3:
            stop = min(spec.steps, step + rng.randint(1, spec.steps_per_day))
            segments.append(Segment(step, stop))
        else:
            stop = min(spec.steps, step + rng.randint(12, 3 * spec.steps_per_day))
            ns = rng.choice(spec.namespaces)
            segments.append(Segment(step, stop, ns, f"{ns}-{tag}-{len(segments):03d}-0", "main",
                                    k=rng.randrange(71)))
        step = stop
    return segments


def build_fleet(spec: FleetSpec) -> list[Gpu]:
    """Every GPU of the fleet with its schedule (cheap: no samples are produced here)."""
    gpus: list[Gpu] = []
    for n in range(spec.nodes):
        node = f"gpu-node-{n:04d}"
        vendor = AMD if n >= spec.nodes - spec.amd_nodes else NVIDIA
        host_label = "hostname" if vendor == AMD or n % spec.legacy_hostname_every else "Hostname"
        for g in range(spec.gpus_per_node):
            rng = random.Random(f"{spec.seed}:{n}:{g}")
            ident = (f"GPU-{uuid.UUID(int=rng.getrandbits(128), version=4)}" if vendor == NVIDIA
                     else f"PCB{rng.getrandbits(40):012d}")
            gpus.append(Gpu(vendor, node, host_label, g, ident, tuple(_schedule(rng, spec, f"j{n:04d}g{g}"))))
    if spec.malformed:
        gpus = _add_malformed(spec, gpus)
    return gpus


def _add_malformed(spec: FleetSpec, gpus: list[Gpu]) -> list[Gpu]:
    """What real fleets show now and then; each is checked for by the tests."""
    nvidia = [i for i, gpu in enumerate(gpus) if gpu.vendor == NVIDIA]
    if len(nvidia) < 2:
        return gpus
    first, second = nvidia[0], nvidia[1]

    def first_allocation(gpu: Gpu) -> int:
        return next(i for i, seg in enumerate(gpu.segments) if seg.allocated)

    # 1. a pod label without its namespace (a relabelling mistake): unallocated, flagged
    gpu = gpus[first]
    i = first_allocation(gpu)
    segs = list(gpu.segments)
    segs[i] = dataclasses.replace(segs[i], namespace=None)
    gpus[first] = dataclasses.replace(gpu, segments=tuple(segs))
    # 2. one NaN utilisation sample in an allocation
    gpu = gpus[second]
    i = first_allocation(gpu)
    segs = list(gpu.segments)
    segs[i] = dataclasses.replace(segs[i], nan_step=(segs[i].start + segs[i].stop) // 2)
    gpus[second] = dataclasses.replace(gpu, segments=tuple(segs))
    node = gpus[first].node
    day = spec.steps_per_day
    extra = [
        # 3. a GPU whose series carry no host label, idle, on the first day
        Gpu(NVIDIA, None, None, 8, "GPU-00000000-0000-4000-8000-00000000dead", (Segment(0, min(day, spec.steps)),)),
        # 4. a GPU without a UUID on the first node, idle, on the last day
        Gpu(NVIDIA, node, gpus[first].host_label, 9, None, (Segment(max(0, spec.steps - day), spec.steps),)),
    ]
    return gpus + extra


# -- what the tests expect -----------------------------------------------------------------------


def expected_samples(gpus: Iterable[Gpu], vendor: str, by: str, first: int = 0, stop: int | None = None
                     ) -> Counter[str | None]:
    """Presence samples in steps [first, stop) per namespace (`by="namespace"`) or host
    (`by="host"`); key None: samples without that label (idle GPUs, malformed series)."""
    counts: Counter[str | None] = Counter()
    for gpu in gpus:
        if gpu.vendor != vendor:
            continue
        for seg in gpu.segments:
            a, b = max(seg.start, first), min(seg.stop, seg.stop if stop is None else stop)
            if a < b:
                counts[seg.namespace if by == "namespace" else gpu.node] += b - a
    return counts


def expected_utilisation(gpus: Iterable[Gpu], vendor: str) -> tuple[dict[str, tuple[int, int]], int]:
    """Per namespace (sum of utilisation, samples) over allocations whose series has no NaN,
    and how many allocated series were left out for a NaN."""
    totals: dict[str, tuple[int, int]] = {}
    skipped = 0
    for gpu in gpus:
        if gpu.vendor != vendor:
            continue
        for seg in gpu.segments:
            if seg.namespace is None:
                continue
            if seg.nan_step is not None:
                skipped += 1
                continue
            s, c = totals.get(seg.namespace, (0, 0))
            totals[seg.namespace] = (s + sum(int(util(seg, i)) for i in range(seg.start, seg.stop)),
                                     c + seg.stop - seg.start)
    return totals, skipped


# -- OpenMetrics -----------------------------------------------------------------------------------

# (family, help, value(gpu, seg, step, util) -> str); presence metric first
Values = Callable[[Gpu, Segment, int, float], str]
DCGM_FAMILIES: tuple[tuple[str, str, Values], ...] = (
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "Ratio of time the graphics engine is active.",
     lambda g, s, i, u: f"{u / 100:.2f}"),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).",
     lambda g, s, i, u: str(20000 + (s.k * 37 + i) % 50000 if s.allocated else 0)),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).",
     lambda g, s, i, u: str(NVIDIA_FB_MIB - (20000 + (s.k * 37 + i) % 50000 if s.allocated else 0))),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", lambda g, s, i, u: f"{70 + u * 6.3:.3f}"),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "Total energy consumption since boot (in mJ).",
     lambda g, s, i, u: str(10**9 * (g.index + 1) + i * 300 * 350_000)),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", lambda g, s, i, u: str(30 + int(u) // 3)),
    ("DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C).", lambda g, s, i, u: str(35 + int(u) // 4)),
    ("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.",
     lambda g, s, i, u: "79" if g.index == 3 else "0"),
)
ROCM_FAMILIES: tuple[tuple[str, str, Values], ...] = (
    ("gpu_used_vram", "Total VRAM memory used in MB",
     lambda g, s, i, u: str(30000 + (s.k * 41 + i) % 150000 if s.allocated else 0)),
    ("gpu_free_vram", "Total VRAM memory free in MB",
     lambda g, s, i, u: str(AMD_VRAM_MB - (30000 + (s.k * 41 + i) % 150000 if s.allocated else 0))),
    ("gpu_total_vram", "Total VRAM available in MB", lambda g, s, i, u: str(AMD_VRAM_MB)),
    ("gpu_power_usage", "GPU power usage in Watts", lambda g, s, i, u: f"{140 + u * 5.6:.1f}"),
    ("gpu_package_power", "Current socket power in Watts", lambda g, s, i, u: f"{150 + u * 5.6:.1f}"),
    ("gpu_energy_consumed", "Accumulated energy consumed by the GPU in Micro Jules (uJ)",
     lambda g, s, i, u: str(10**12 * (g.index + 1) + i * 300 * 500_000_000)),
    ("gpu_junction_temperature", "Hotspot (aka junction) temperature value in Celsius",
     lambda g, s, i, u: str(35 + int(u) // 3)),
    ("gpu_edge_temperature", "Edge temperature value in Celsius", lambda g, s, i, u: str(30 + int(u) // 4)),
    ("gpu_memory_temperature", "Memory temperature value in Celsius", lambda g, s, i, u: str(40 + int(u) // 5)),
    ("gpu_ecc_uncorrect_total", "Total Uncorrectable ECC error count", lambda g, s, i, u: "0"),
)
PRESENCE_HELP = {NVIDIA: "GPU utilization (in %).", AMD: "Graphics engine usage percentage (0 - 100)"}


def write_openmetrics(spec: FleetSpec, gpus: list[Gpu], out: IO[str], first: int, stop: int) -> int:
    """Write steps [first, stop) of the fleet's history to `out` (without `# EOF`); returns the
    number of samples."""
    written = 0
    detail_first = max(first, spec.steps - spec.detail_hours * 3600 // spec.step_s)
    t0, dt = spec.start, spec.step_s
    for vendor, families in ((NVIDIA, DCGM_FAMILIES), (AMD, ROCM_FAMILIES)):
        mine = [(gpu, gpu.series()) for gpu in gpus if gpu.vendor == vendor]
        if not mine:
            continue
        name = PRESENCE_METRIC[vendor]
        out.write(f"# HELP {name} {PRESENCE_HELP[vendor]}\n# TYPE {name} gauge\n")
        for _gpu, series in mine:
            for labels, segs in series:
                prefix = f"{name}{{{labels}}} "
                for seg in segs:
                    a, b = max(seg.start, first), min(seg.stop, stop)
                    if a >= b:
                        continue
                    if seg.allocated:  # util() inlined: this loop writes every sample of the month
                        lines = [f"{prefix}{30 + (seg.k + 13 * i) % 71} {t0 + i * dt}\n" for i in range(a, b)]
                    else:
                        lines = [f"{prefix}0 {t0 + i * dt}\n" for i in range(a, b)]
                    if seg.nan_step is not None and a <= seg.nan_step < b:
                        lines[seg.nan_step - a] = f"{prefix}NaN {t0 + seg.nan_step * dt}\n"
                    out.writelines(lines)
                    written += b - a
        if detail_first >= stop:
            continue
        for family, help_text, value in families:
            out.write(f"# HELP {family} {help_text}\n# TYPE {family} gauge\n")
            for gpu, series in mine:
                for labels, segs in series:
                    for seg in segs:
                        a, b = max(seg.start, detail_first), min(seg.stop, stop)
                        for i in range(a, b):
                            u = 0.0 if i == seg.nan_step else util(seg, i)
                            out.write(f"{family}{{{labels}}} {value(gpu, seg, i, u)} {t0 + i * dt}\n")
                        written += max(0, b - a)
    return written


def chunks(spec: FleetSpec, gpus: list[Gpu], max_samples: int = CHUNK_SAMPLES) -> Iterator[tuple[int, int]]:
    """Time-disjoint step ranges of whole days, each with about `max_samples` samples or fewer."""
    per_day = max(1, len(gpus) * spec.steps_per_day)
    days = max(1, min(spec.days, max_samples // per_day))
    step = days * spec.steps_per_day
    for first in range(0, spec.steps, step):
        yield first, min(spec.steps, first + step)


def promtool() -> str:
    """Path of promtool, or FileNotFoundError naming the installer."""
    path = shutil.which("promtool")
    if path is None:
        raise FileNotFoundError("promtool not found: run tests/peers/prometheus.sh install")
    return path


def backfill(spec: FleetSpec, cache_root: Path = CACHE_ROOT, log: Callable[[str], None] | None = None) -> Path:
    """The TSDB blocks directory holding `spec`'s history, backfilled on the first call and
    cached under `cache_root/<spec.cache_key()>`. Chunks are written while promtool works on
    the previous one."""
    final = cache_root / spec.cache_key()
    if (final / "COMPLETE").exists():
        return final / "blocks"
    tool = promtool()
    say = log or (lambda message: None)
    cache_root.mkdir(parents=True, exist_ok=True)
    for stale in cache_root.glob(f"{spec.cache_key()}.tmp-*"):  # left by a run that was killed
        if not Path(f"/proc/{stale.name.rsplit('-', 1)[1]}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    work = cache_root / f"{spec.cache_key()}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "blocks").mkdir(parents=True)
    gpus = build_fleet(spec)
    began = time.monotonic()
    running: tuple[subprocess.Popen[bytes], Path] | None = None
    samples = 0
    done = False
    try:
        for n, (first, stop) in enumerate(chunks(spec, gpus)):
            path = work / f"chunk-{n % 2}.om"
            with path.open("w", buffering=1 << 20) as out:
                samples += write_openmetrics(spec, gpus, out, first, stop)
                out.write("# EOF\n")
            if running is not None:
                _wait(*running)
            say(f"backfilling steps {first}-{stop} of {spec.steps} ({samples:,} samples so far, "
                f"{time.monotonic() - began:.0f} s)")
            running = (subprocess.Popen(
                [tool, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=720h", "--quiet",
                 str(path), str(work / "blocks")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), path)
        if running is not None:
            _wait(*running)
            running = None
        done = True
    finally:
        if running is not None:
            running[0].kill()
            running[0].wait()
        if not done:  # half-written blocks must never look cached; chunk files are large
            shutil.rmtree(work, ignore_errors=True)
    (work / "spec.json").write_text(json.dumps({"v": GENERATOR_VERSION, "samples": samples,
                                                **dataclasses.asdict(spec)}, indent=1))
    (work / "COMPLETE").write_text(f"{samples}\n")
    try:
        work.rename(final)
    except OSError:  # another run finished the same blocks first
        shutil.rmtree(work, ignore_errors=True)
    say(f"backfilled {samples:,} samples in {time.monotonic() - began:.0f} s into {final / 'blocks'}")
    return final / "blocks"


def _wait(proc: subprocess.Popen[bytes], path: Path) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"promtool failed on {path} (exit {proc.returncode}): {err.decode()[-2000:]}")
    path.unlink(missing_ok=True)


def tenant_namespaces(count: int) -> tuple[str, ...]:
    """`count` namespaces named tenant-000, tenant-001, ..."""
    return tuple(f"tenant-{i:03d}" for i in range(count))


def main(argv: list[str] | None = None) -> int:
    """Backfill a fleet's history (or reuse the cached one) and print its blocks directory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = FleetSpec()
    parser.add_argument("--nodes", type=int, default=defaults.nodes)
    parser.add_argument("--gpus", type=int, default=defaults.gpus_per_node)
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--amd-nodes", type=int, default=defaults.amd_nodes)
    parser.add_argument("--detail-hours", type=int, default=defaults.detail_hours)
    parser.add_argument("--tenants", type=int, default=0, help="namespaces tenant-000... (default: a fixed five)")
    parser.add_argument("--no-malformed", action="store_true")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    spec = FleetSpec(nodes=args.nodes, gpus_per_node=args.gpus, days=args.days, amd_nodes=args.amd_nodes,
                     detail_hours=args.detail_hours, malformed=not args.no_malformed, seed=args.seed,
                     namespaces=tenant_namespaces(args.tenants) if args.tenants else NAMESPACES)
    print(backfill(spec, log=lambda message: print(message, file=sys.stderr, flush=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
