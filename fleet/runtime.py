"""The fleet's long-lived parts in one process: drivers, the secret box, the operation runner."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Engine

from fleet.operations import OperationRunner
from fleet.provisioning.registry import Drivers
from kiln.security import SecretBox
from kiln.settings import Settings, resolve_secret_key

_lock = threading.Lock()


@dataclass
class FleetRuntime:
    """Drivers, secret box, runner, and a bounded pool for operations started over the API."""

    drivers: Drivers
    box: SecretBox
    runner: OperationRunner
    pool: ThreadPoolExecutor

    @classmethod
    def build(cls, settings: Settings, engine: Engine, drivers: Drivers | None = None) -> FleetRuntime:
        """A runtime for these settings (the secret key must be resolvable)."""
        drivers = drivers or Drivers(settings)
        box = SecretBox(resolve_secret_key(settings))
        runner = OperationRunner(engine, drivers, box, timeout=settings.operation_timeout)
        pool = ThreadPoolExecutor(max_workers=settings.bulk_concurrency, thread_name_prefix="kiln-op")
        return cls(drivers, box, runner, pool)


def runtime_of(state: object) -> FleetRuntime:
    """The FleetRuntime attached to an app's state, built on first use."""
    with _lock:
        runtime = getattr(state, "fleet", None)
        if runtime is None:
            runtime = FleetRuntime.build(state.settings, state.engine)
            state.fleet = runtime
        return runtime
