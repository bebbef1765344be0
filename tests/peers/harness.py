"""Start and stop real peers through `tests/peers/NAME.sh`, and report a missing one.

Each script takes `install`, `start STATE_DIR [ARGS...]` (prints the peer's URL as its last
stdout line once the peer answers; some scripts have other start commands, e.g. redfish.sh's
`start-emulator`) and `stop STATE_DIR`. A peer that cannot start skips its
tests, except with KILN_REQUIRE_PEERS=1 (CI), where it fails them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PEERS_DIR = Path(__file__).parent


def peers_required() -> bool:
    """True in CI: a missing peer is an error, never a skip."""
    return os.environ.get("KILN_REQUIRE_PEERS") == "1"


def missing_peer(name: str, why: str) -> None:
    """Skip (or, when peers are required, fail) because peer `name` is unavailable."""
    message = f"peer {name} is unavailable: {why}"
    if peers_required():
        pytest.fail(message + " (KILN_REQUIRE_PEERS=1 forbids skipping)", pytrace=False)
    pytest.skip(message)


@contextmanager
def running_peer(name: str, state_dir: Path, *args: str, timeout: float = 120, command: str = "start") -> Iterator[str]:
    """Run `NAME.sh COMMAND STATE_DIR ARGS`, yield the URL it printed, and stop it afterwards."""
    script = PEERS_DIR / f"{name}.sh"
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        started = subprocess.run(
            ["bash", str(script), command, str(state_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing_peer(name, str(exc))
    if started.returncode != 0 or not started.stdout.strip():
        missing_peer(name, (started.stderr.strip().splitlines() or ["no output"])[-1])
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(script), "stop", str(state_dir)], capture_output=True, timeout=60)
