"""A simulated dcgm-exporter: an HTTP endpoint serving its `/metrics` text for many GPUs.

Series names, labels and units are dcgm-exporter's (`etc/default-counters.csv`; host label
`Hostname` as before 4.x): DCGM_FI_DEV_GPU_UTIL (%), DCGM_FI_PROF_GR_ENGINE_ACTIVE (ratio),
DCGM_FI_DEV_FB_USED / _FB_FREE (MiB), DCGM_FI_DEV_POWER_USAGE (W), DCGM_FI_DEV_GPU_TEMP (°C),
DCGM_FI_DEV_XID_ERRORS (last XID). Values are deterministic functions of the GPU and the time
(`utilisation`), so a demo's backfilled history and its live scrapes agree. Power follows
utilisation between the model's idle draw and its board power limit (`POWER_RANGE`). A GPU
whose host is powered off serves nothing, as a real exporter on a dark node would. One
endpoint can serve a whole fleet, like a federating proxy would.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FB_TOTAL_MIB = 81559  # an H100 80GB HBM3 as dcgm-exporter reports it
# (idle watts, board power limit) by model family: H100 SXM5 700 W, A100 SXM4 400 W
POWER_RANGE = {"H100": (70.0, 700.0), "A100": (55.0, 400.0)}


@dataclass(frozen=True)
class SimGpu:
    """One simulated GPU."""

    host: str
    index: int
    uuid: str
    model: str = "NVIDIA H100 80GB HBM3"
    xid: int = 0  # last XID error (0: none)


@cache  # the demo's month of history asks for each GPU's two phases ~1.4 M times
def _phase(gpu: SimGpu, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{gpu.uuid}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 * 2 * math.pi


def utilisation(gpu: SimGpu, at: datetime, busy: bool) -> float:
    """GPU utilisation in whole percent at `at`: a daily cycle plus a faster wobble while the
    GPU's node is busy (leased); 0 when idle."""
    if not busy:
        return 0.0
    hours = at.timestamp() / 3600
    value = 62 + 28 * math.sin(2 * math.pi * hours / 24 + _phase(gpu, "day")) + 9 * math.sin(
        2 * math.pi * hours / 3.7 + _phase(gpu, "wobble"))
    return float(round(min(100.0, max(0.0, value))))


def power_watts(gpu: SimGpu, util: float) -> float:
    """The GPU's board power at `util` percent: idle draw plus a linear share of the rest."""
    idle, limit = next((r for family, r in POWER_RANGE.items() if family in gpu.model), POWER_RANGE["H100"])
    return round(idle + (limit - idle) * util / 100, 3)


def readings(gpu: SimGpu, at: datetime, busy: bool) -> dict[str, float]:
    """Every served series' value for `gpu` at `at` (its host powered on)."""
    util = utilisation(gpu, at, busy)
    used = round(FB_TOTAL_MIB * (0.15 + 0.8 * util / 100)) if busy else 0
    return {
        "DCGM_FI_DEV_GPU_UTIL": util,
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": round(util / 100 * 0.93, 4),
        "DCGM_FI_DEV_FB_USED": float(used),
        "DCGM_FI_DEV_FB_FREE": float(FB_TOTAL_MIB - used),
        "DCGM_FI_DEV_POWER_USAGE": power_watts(gpu, util),
        "DCGM_FI_DEV_GPU_TEMP": float(round(31 + 0.45 * util)),
        "DCGM_FI_DEV_XID_ERRORS": float(gpu.xid),
    }


def render(gpus: Sequence[SimGpu], at: datetime, busy: Callable[[str], bool],
           powered: Callable[[str], bool] = lambda host: True) -> str:
    """The exposition text dcgm-exporter would serve for `gpus` at `at` (the GPUs of hosts
    that are not `powered` left out)."""
    per_gpu = [(gpu, readings(gpu, at, busy(gpu.host))) for gpu in gpus if powered(gpu.host)]
    lines = []
    for name in per_gpu[0][1] if per_gpu else ():
        lines += [f"# HELP {name} {name}.", f"# TYPE {name} gauge"]
        for gpu, values in per_gpu:
            labels = (f'gpu="{gpu.index}",UUID="{gpu.uuid}",pci_bus_id="00000000:{0x18 + gpu.index * 16:02X}:00.0",'
                      f'device="nvidia{gpu.index}",modelName="{gpu.model}",Hostname="{gpu.host}"')
            value = values[name]
            lines.append(f"{name}{{{labels}}} {int(value) if value.is_integer() else value}")
    return "\n".join(lines) + "\n"


class DcgmExporterSim:
    """Serves `render(...)` at `/metrics` on a loopback port until `stop()`."""

    def __init__(self, gpus: Sequence[SimGpu], busy: Callable[[str], bool], clock: Callable[[], datetime],
                 powered: Callable[[str], bool] = lambda host: True) -> None:
        self.gpus, self.busy, self.clock, self.powered = list(gpus), busy, clock, powered
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = render(sim.gpus, sim.clock(), sim.busy, sim.powered).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="dcgm-exporter-sim", daemon=True)

    @property
    def url(self) -> str:
        """The `/metrics` URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/metrics"

    def start(self) -> DcgmExporterSim:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
