"""Long-running processes freeze their start-up objects out of the garbage collector's full passes
(`kiln.long_lived`): `kiln serve` once its app is built and again after the console's first build;
an app built any other way (tests, `create_app` alone) freezes nothing. Each case runs in a
process of its own: freezing the test process would keep its garbage for good."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import base_env, run
from tests.conftest import TEST_SECRET_KEY

BUILD_CONSOLE = """
import gc, json, sys
from fastapi.testclient import TestClient
from kiln.app import create_app
from kiln.settings import load_settings

app = create_app(load_settings())
if sys.argv[1] == "serve":  # what `kiln serve` does before serving
    from kiln.long_lived import serve_long_lived
    serve_long_lived(app)
frozen_at_start = gc.get_freeze_count()
with TestClient(app) as client:
    page = client.get("/signin")  # the console's first request builds it
    gc.collect()
    print(json.dumps({"status": page.status_code, "at_start": frozen_at_start, "after_console": gc.get_freeze_count(),
                      "still_walked": len(gc.get_objects())}))
"""


@pytest.mark.parametrize("mode", ["serve", "plain"])
def test_only_the_server_freezes_its_start_up_and_console_objects(tmp_path: Path, mode: str) -> None:
    env = base_env(tmp_path, KILN_SECRET_KEY=TEST_SECRET_KEY)
    assert run(env, "migrate").returncode == 0
    result = subprocess.run([sys.executable, "-c", BUILD_CONSOLE, mode], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["status"] == 200
    if mode == "plain":
        assert seen["at_start"] == seen["after_console"] == 0
    else:
        # the app's modules and objects, then the console's Dash app on top of them
        assert seen["at_start"] > 50_000 and seen["after_console"] > seen["at_start"] + 10_000
        assert seen["still_walked"] < seen["after_console"] / 10  # what a full pass still walks
