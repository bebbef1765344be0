"""A dcgm-exporter with MIG instances and energy counters, scraped directly by Kiln and by a real
Prometheus: the same GPU-hours (presence samples per GPU and instance) and the same kWh per
GPU-hour either way, both equal to figures worked out here from what was served.

The exporter serves timestamped frames (`metric{labels} value ms`), 3 s apart across an hour
boundary (in the last hour: Prometheus refuses samples more than an hour older than its newest); the test moves to the next frame only once Prometheus has stored the current one,
and Kiln's direct collector reads each frame once, so both saw the same readings. The label
set is dcgm-exporter's (tests/data/upstream/dcgm-exporter/, NVIDIA's MIG example); the MIG
behaviours built in are the ones reported upstream: no DCGM_FI_DEV_GPU_UTIL on a MIG GPU (a
blank here), a GPU_UTIL of 0 on its instances (NVIDIA/dcgm-exporter#216), whole-GPU power and
energy repeated on every instance's series.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from collectors.dcgm import DCGM
from collectors.exporter_scrape import ExporterScrapeCollector
from collectors.gpu_usage import GpuUsage
from collectors.models import GpuEnergyHour, HealthSnapshot, Rollup5m
from collectors.prometheus import SKIP_BLANK, SKIP_NOT_ON_INSTANCE, SKIP_REPEATED, PrometheusClient
from collectors.store import GPU_UTIL_ROLLUP, persist_results
from fleet.models import Gpu
from tests.factories import World
from tests.fleet_helpers import make_node_row
from tests.loopback import LoopbackServer
from tests.peers.harness import running_peer

WHOLE = "GPU-aaaa0001-0000-0000-0000-000000000001"  # a whole GPU; its pod leaves halfway
MIG = "GPU-34319582-d595-d1c7-d1d2-179bcfa61660"  # an A100 in MIG mode with two instances
FRAMES = 20
STEP_S = 3
STEP = timedelta(seconds=STEP_S)
RESET_AT = 14  # the whole GPU's counter restarts (driver reload) before this frame
MIG_WATTS, WHOLE_WATTS = 300, 200


def frame_text(k: int, at: datetime) -> str:
    """Frame k of the exporter's output, every sample stamped `at`."""
    ms = int(at.timestamp() * 1000)
    lines = []

    def line(name: str, labels: str, value: float | int) -> None:
        lines.append(f"{name}{{{labels}}} {value} {ms}")

    whole = f'gpu="0",UUID="{WHOLE}",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="424773df46e0"'
    pod = ',container="main",namespace="team-a",pod="train-0"' if k < FRAMES // 2 else ""
    line("DCGM_FI_DEV_GPU_UTIL", whole + pod, 50 + k)
    line("DCGM_FI_DEV_POWER_USAGE", whole + pod, WHOLE_WATTS)
    joules = WHOLE_WATTS * STEP_S * (k - RESET_AT if k >= RESET_AT else k + 100)
    line("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", whole + pod, joules * 1000)  # mJ

    gpu = f'gpu="1",UUID="{MIG}",device="nvidia1",modelName="NVIDIA A100-SXM4-40GB",Hostname="ub20-a100-k8s"'
    energy_mj = (MIG_WATTS * STEP_S * k + 319159) * 1000
    line("DCGM_FI_DEV_GPU_UTIL", gpu, 9223372036854775794)  # not supported under MIG: a blank
    line("DCGM_FI_DEV_POWER_USAGE", gpu, MIG_WATTS)
    line("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", gpu, energy_mj)
    for gi, profile, first in (("1", "3g.20gb", 0), ("2", "3g.20gb", 5)):
        if k < first:
            continue  # instance 2 is created at frame 5
        instance = f'{gpu},GPU_I_PROFILE="{profile}",GPU_I_ID="{gi}",namespace="team-{gi}",pod="p-{gi}"'
        line("DCGM_FI_DEV_GPU_UTIL", instance, 0)
        line("DCGM_FI_PROF_GR_ENGINE_ACTIVE", instance, 0.25 * int(gi))
        line("DCGM_FI_DEV_POWER_USAGE", instance, MIG_WATTS)
        line("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", instance, energy_mj)
    return "\n".join(lines) + "\n"


class FrameServer:
    """A loopback exporter serving the current frame."""

    def __init__(self) -> None:
        self.text = ""
        self.server = LoopbackServer(lambda path, headers: (200, "text/plain; version=0.0.4", self.text.encode()))

    @property
    def target(self) -> str:
        return f"localhost:{self.server.port}"  # `localhost` is also a node's name below


def hour_to_cross() -> datetime:
    """The hour boundary just passed, when every frame around it fits in Prometheus' last hour
    while the test runs; near the top of the hour, wait for the next one (at most ~3 minutes)."""
    while True:
        now = datetime.now(UTC)
        if 1 <= now.minute <= 57:
            return now.replace(minute=0, second=0, microsecond=0)
        time.sleep(15)


@pytest.fixture(scope="module")
def frames_seen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FrameServer, datetime]]:
    exporter = FrameServer()
    state = tmp_path_factory.mktemp("prometheus-frames")
    (state / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dcgm-exporter\n"
        f"    static_configs:\n      - targets: ['{exporter.target}']\n")
    try:
        with running_peer("prometheus", state) as url:
            yield url, exporter, hour_to_cross()
    finally:
        exporter.server.close()


def stored_gpu_samples(session: Session, start: datetime, end: datetime) -> dict[str, int]:
    """Utilisation samples per GPU or instance in the stored 5-minute rollups of [start, end)."""
    rows = session.exec(select(Rollup5m.entity, func.sum(Rollup5m.count)).where(
        Rollup5m.metric == GPU_UTIL_ROLLUP, col(Rollup5m.bucket) >= start, col(Rollup5m.bucket) < end)
        .group_by(Rollup5m.entity))
    return {entity: int(count) for entity, count in rows}


def stored_gpu_kwh(session: Session, start: datetime, end: datetime) -> dict[tuple[str, datetime], Decimal]:
    """Stored kWh per (GPU, hour) for the hours in [start, end)."""
    rows = session.exec(select(GpuEnergyHour.entity, GpuEnergyHour.hour, GpuEnergyHour.kwh)
                        .where(col(GpuEnergyHour.hour) >= start, col(GpuEnergyHour.hour) < end))
    return {(entity, hour): Decimal(kwh) for entity, hour, kwh in rows}


def kwh(joules: int) -> Decimal:
    """The stated rule: each interval's energy rounded half-even to 1 mWh, then added."""
    return (Decimal(joules) / 3_600_000).quantize(Decimal("0.000001"), ROUND_HALF_EVEN)


def test_direct_and_prometheus_agree_on_mig_gpu_hours_and_kwh(frames_seen, engine: Engine, world: World) -> None:
    url, exporter, boundary = frames_seen
    client = PrometheusClient(url)
    target_host = make_node_row(world, gpus=0, name="localhost")  # the scrape target's host: the whole GPU's node
    a100 = make_node_row(world, gpus=0, name="a100-node")
    world.session.add(Gpu(node_id=a100.id, index=0, uuid=MIG, model="NVIDIA A100-SXM4-40GB"))
    world.session.commit()
    first = boundary - 10 * STEP  # frames 0..9 before the hour, 10..19 from it on
    collector = ExporterScrapeCollector([f"http://{exporter.target}/metrics"], DCGM)
    skipped: list[dict[str, int]] = []
    try:
        for k in range(FRAMES):
            at = first + k * STEP
            exporter.text = frame_text(k, at)
            deadline = time.monotonic() + 20
            while not client.query(f'timestamp(DCGM_FI_DEV_POWER_USAGE{{UUID="{MIG}"}}) == {at.timestamp():.0f}',
                                   at + timedelta(seconds=1)):
                assert time.monotonic() < deadline, f"Prometheus did not store frame {k}"
                time.sleep(0.2)
            (result,) = collector.collect()
            assert result.ok, result.error
            skipped.append(result.skipped)
            with Session(engine) as session, session.begin():
                persist_results(session, "dcgm-exporter", [result])
    finally:
        collector.close()
    # every frame: the MIG GPU's blank utilisation; each instance's GPU_UTIL of 0 and its two
    # repeats of the GPU's power and energy
    assert skipped[0] == {SKIP_BLANK: 1, SKIP_NOT_ON_INSTANCE: 1, SKIP_REPEATED: 2}
    assert skipped[-1] == {SKIP_BLANK: 1, SKIP_NOT_ON_INSTANCE: 2, SKIP_REPEATED: 4}

    usage = GpuUsage(client, DCGM, scrape_interval=STEP)
    window = (boundary - timedelta(minutes=10), boundary + timedelta(minutes=10))  # whole 5-minute buckets
    expected_samples = {WHOLE: FRAMES, f"{MIG}/1": FRAMES, f"{MIG}/2": FRAMES - 5}  # never the MIG GPU itself
    with Session(engine) as session:
        assert stored_gpu_samples(session, *window) == expected_samples
        stored = stored_gpu_kwh(session, boundary - timedelta(hours=1), boundary + timedelta(hours=1))
    assert usage.samples_by_gpu(*window) == expected_samples

    before, after = boundary - timedelta(hours=1), boundary
    # the MIG GPU: 10 intervals before the hour, 9 after, 300 W x 3 s each, counted once (not per instance)
    # the whole GPU: 200 W x 3 s, minus the interval across its counter reset
    expected_kwh = {(MIG, before): 10 * kwh(MIG_WATTS * STEP_S), (MIG, after): 9 * kwh(MIG_WATTS * STEP_S),
                    (WHOLE, before): 10 * kwh(WHOLE_WATTS * STEP_S), (WHOLE, after): 8 * kwh(WHOLE_WATTS * STEP_S)}
    assert stored == expected_kwh
    assert usage.gpu_kwh_by_hour(boundary - timedelta(hours=1), boundary + timedelta(hours=1)) == expected_kwh
    assert GpuUsage(client, DCGM, scrape_interval=STEP).gpu_hours_by_namespace(*window).values == {
        "team-1": Decimal(FRAMES * STEP_S) / 3600, "team-2": Decimal((FRAMES - 5) * STEP_S) / 3600,
        "team-a": Decimal(FRAMES // 2 * STEP_S) / 3600}

    # nodes: the whole GPU by the scrape target's host (its host label is a container id), the
    # MIG GPU's instances by their parent GPU's UUID
    with Session(engine) as session:
        node_of = {row.entity: row.node_id for row in session.exec(
            select(HealthSnapshot).where(HealthSnapshot.metric.in_(["gpu_util", "gpu_power"])))}
        energy_nodes = {row.entity: row.node_id for row in session.exec(select(GpuEnergyHour))}
    assert node_of[f"{MIG}/1"] == node_of[f"{MIG}/2"] == node_of[MIG] == energy_nodes[MIG] == a100.id
    assert node_of[WHOLE] == energy_nodes[WHOLE] == target_host.id
