"""Run the `kiln` command as a subprocess, the way scripts use it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KILN = str(Path(sys.executable).parent / "kiln")


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `kiln ARGS` with this environment and capture its output."""
    return subprocess.run([KILN, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The current environment without KILN_* settings, with a data dir under `tmp_path`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    return {**env, "KILN_DATA_DIR": str(tmp_path / "data"), **extra}
