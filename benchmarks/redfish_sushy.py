"""The baseline of benchmarks/redfish_poll.py: a plain sushy loop over N Redfish BMCs.

    .peers/ironic/bin/python benchmarks/redfish_sushy.py < job.json     (password in $REDFISH_FLEET_PASSWORD)

No Prometheus Redfish exporter can be installed here (none on PyPI or in Debian), so the
baseline is what an operator writes with sushy, the OpenStack Redfish client Ironic uses:
one `sushy.Sushy(url, username, password)` per BMC (service root, then a DSP0266 session, as
sushy's default `SessionOrBasicAuth` does), kept between polls, and each poll reads what Kiln's
collector reads, on a ThreadPoolExecutor of the same size: `get_system(path)` (power state,
health), its `processors` (the GPUs), its chassis, the chassis' `EnvironmentMetrics`,
`PowerSubsystem` (supplies and their `Metrics`) and `ThermalSubsystem` (`ThermalMetrics` and
`Fans`), the system's `LogServices` and their `Entries`, and the `UpdateService`'s firmware
inventory. sushy 5.14 has no classes for the newer DMTF shapes (EnvironmentMetrics,
PowerSubsystem, ThermalSubsystem, LogService), so they are small `ResourceBase` subclasses
below, as sushy's own resources are written.

Runs in a Python that has sushy (Ironic's peer venv, tests/peers/ironic.sh), using the standard
library besides. Input on stdin: `{"targets": [{"url", "system"}...], "username", "workers",
"polls", "expected"}`; output: one JSON line with each poll's wall and CPU seconds, failures,
values that differ from `expected`, and peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import sushy
from sushy.resources import base, common


def _link(name: str) -> base.Field:
    return base.Field([name, "@odata.id"])


class EnvironmentMetrics(base.ResourceBase):
    """DMTF EnvironmentMetrics: the chassis' power reading and energy counter."""

    power_watts = base.Field(["PowerWatts", "Reading"])
    energy_kwh = base.Field(["EnergykWh", "Reading"])


class PowerSupplyMetrics(base.ResourceBase):
    """DMTF PowerSupplyMetrics: a supply's input power and energy."""

    input_watts = base.Field(["InputPowerWatts", "Reading"])
    energy_kwh = base.Field(["EnergykWh", "Reading"])


class PowerSupply(base.ResourceBase):
    """DMTF PowerSupply: its status and the link to its metrics."""

    identity = base.Field("Id")
    status = common.StatusField("Status")
    metrics_path = _link("Metrics")


class PowerSupplyCollection(base.ResourceCollectionBase):
    """The PowerSubsystem's PowerSupplies."""

    @property
    def _resource_type(self) -> type:
        return PowerSupply


class PowerSubsystem(base.ResourceBase):
    """DMTF PowerSubsystem: the link to the supplies."""

    supplies_path = _link("PowerSupplies")


class Fan(base.ResourceBase):
    """DMTF Fan (ThermalSubsystem): speed in percent and RPM."""

    identity = base.Field("Id")
    status = common.StatusField("Status")
    speed_percent = base.Field(["SpeedPercent", "Reading"])
    speed_rpm = base.Field(["SpeedPercent", "SpeedRPM"])


class FanCollection(base.ResourceCollectionBase):
    """The ThermalSubsystem's Fans."""

    @property
    def _resource_type(self) -> type:
        return Fan


class ThermalMetrics(base.ResourceBase):
    """DMTF ThermalMetrics: the temperature readings."""

    temperatures = base.Field("TemperatureReadingsCelsius", default=[])


class ThermalSubsystem(base.ResourceBase):
    """DMTF ThermalSubsystem: links to ThermalMetrics and Fans."""

    metrics_path = _link("ThermalMetrics")
    fans_path = _link("Fans")


class LogEntries(base.ResourceBase):
    """A LogService's Entries collection, read as its (expanded) Members."""

    entries = base.Field("Members", default=[])


class LogService(base.ResourceBase):
    """DMTF LogService: the link to its entries."""

    entries_path = _link("Entries")


class LogServiceCollection(base.ResourceCollectionBase):
    """A system's LogServices."""

    @property
    def _resource_type(self) -> type:
        return LogService


def sub(resource: base.ResourceBase, cls: type, path: str) -> base.ResourceBase:
    """Read the resource at `path` as `cls`, on `resource`'s connection."""
    return cls(resource._conn, path, redfish_version=resource.redfish_version, registries=None, root=resource.root)


def poll(root: sushy.Sushy, system_path: str) -> dict:
    """One BMC's readings, as counts and values to compare with the mockup."""
    system = root.get_system(system_path)
    gpus = [p for p in system.processors.get_members() if p.processor_type == sushy.ProcessorType.GPU]
    chassis = system.chassis[0]
    links = chassis.json
    env = sub(chassis, EnvironmentMetrics, links["EnvironmentMetrics"]["@odata.id"])
    power = sub(chassis, PowerSubsystem, links["PowerSubsystem"]["@odata.id"])
    supplies = sub(chassis, PowerSupplyCollection, power.supplies_path).get_members()
    metrics = [sub(chassis, PowerSupplyMetrics, s.metrics_path) for s in supplies
               if s.metrics_path and s.status.state in (None, sushy.State.ENABLED)]
    thermal = sub(chassis, ThermalSubsystem, links["ThermalSubsystem"]["@odata.id"])
    temperatures = [t for t in sub(chassis, ThermalMetrics, thermal.metrics_path).temperatures
                    if t.get("Reading") is not None]
    fans = sub(chassis, FanCollection, thermal.fans_path).get_members()
    entries = []
    for service in sub(system, LogServiceCollection, system.json["LogServices"]["@odata.id"]).get_members():
        entries += sub(system, LogEntries, service.entries_path).entries
    firmware = root.get_update_service().firmware_inventory.get_members()
    return {"power_on": system.power_state == sushy.PowerState.ON,
            "health": str(system.status.health_rollup or system.status.health),
            "watts": env.power_watts,
            "energy_kwh": env.energy_kwh if env.energy_kwh is not None else sum(m.energy_kwh or 0 for m in metrics),
            "psus": sum(1 for m in metrics if m.input_watts is not None),
            "temperatures": len(temperatures),
            "fans": sum(1 for f in fans if f.speed_percent is not None),
            "gpus": len(gpus), "log_entries": len(entries), "firmware": len(firmware)}


def main() -> None:
    """Read the job from stdin, poll `polls` times, print the measurements."""
    job = json.load(sys.stdin)
    password = os.environ.get("REDFISH_FLEET_PASSWORD", "")
    targets, expected = job["targets"], job["expected"]
    roots: dict[int, sushy.Sushy] = {}

    def one(i: int) -> tuple[str | None, bool]:
        try:
            if i not in roots:
                roots[i] = sushy.Sushy(targets[i]["url"] + "/redfish/v1", username=job["username"],
                                       password=password, verify=False)
            got = poll(roots[i], targets[i]["system"])
        except Exception as exc:  # a failed BMC is counted, not fatal (as in Kiln's collector)
            return f"{type(exc).__name__}: {exc}"[:300], False
        return None, all(got[k] == v for k, v in expected.items())

    polls = []
    with ThreadPoolExecutor(job["workers"]) as pool:
        for _ in range(job["polls"]):
            cpu0, t0 = time.process_time(), time.monotonic()
            results = list(pool.map(one, range(len(targets))))
            wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
            errors = sorted({e for e, _ in results if e})
            polls.append({"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "errors": sum(1 for e, _ in results if e),
                          "wrong": sum(1 for e, right in results if not e and not right), "first_errors": errors[:3]})
            print(f"sushy poll: {wall:.2f} s wall, {cpu:.2f} s CPU, {polls[-1]['errors']} failed, "
                  f"{polls[-1]['wrong']} wrong", file=sys.stderr, flush=True)
        for root in roots.values():  # end the sessions (not timed), as Kiln's close() does
            root._auth.close()
    print(json.dumps({"polls": polls, "sushy_version": getattr(sushy, "__version__", None) or _version(),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def _version() -> str:
    from importlib.metadata import version
    return version("sushy")


if __name__ == "__main__":
    main()
