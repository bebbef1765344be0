#!/usr/bin/env python3
"""CI proves README, not only the tests: README's first command, exactly as written, from a
fresh clone in a temporary directory with its own fresh virtual environment.

    python3 .ci/readme_demo.py [--timeout SECONDS] [--keep]

Steps: clone this repository's HEAD into a temporary directory; run the first command of
README's "Quick start" block there (no KILN_* variables but a temporary KILN_DATA_DIR, so a
user's own demo data is never touched); wait for its `ready` line; sign in to the console as
alice through its form and load the console; take the banner's own advice to create an API
token for alice and check that it sees acme's bills and only those; stop the demo with
SIGTERM and check that it and its BMC simulators are gone. Standard library only (it runs
before any venv exists). Exit status 0 when every step passed; one line on stderr otherwise.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_PASSWORD = "kiln-demo-password"


class StepFailed(Exception):
    """A README promise that did not hold; the message says which."""


def say(message: str) -> None:
    print(f"readme-demo: {message}", flush=True)


def first_command(readme: str) -> str:
    """The first command of the first ```sh block under "## Quick start", its comment removed."""
    section = readme.split("## Quick start", 1)
    if len(section) != 2:
        raise StepFailed("README.md has no '## Quick start' section")
    block = re.search(r"```sh\n(.*?)```", section[1], re.S)
    if not block:
        raise StepFailed("README.md's Quick start has no ```sh block")
    line = next((line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")), "")
    command = line.split(" #", 1)[0].strip()
    if not command:
        raise StepFailed("README.md's Quick start block holds no command")
    return command


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_ready(process: subprocess.Popen, log: Path, timeout: float) -> str:
    """The demo's banner once its `ready` line and the rest of it are printed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "ready" in text and "Ctrl-C" in text.split("ready", 1)[1]:
            return text
        if process.poll() is not None:
            raise StepFailed(f"the command exited ({process.returncode}) before it was ready:\n{text[-4000:]}")
        time.sleep(1)
    raise StepFailed(f"no `ready` within {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


def check_console(url: str) -> None:
    """Sign in as alice through the console's own form; the console page must load."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(url, timeout=30) as response:  # redirected to the sign-in form
        form = response.read().decode()
        if "/signin" not in response.url:
            raise StepFailed(f"the console did not ask for a sign-in (landed on {response.url})")
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))
    if "csrf_token" not in fields:
        raise StepFailed("the sign-in form has no CSRF token")
    body = urllib.parse.urlencode({**fields, "username": "alice", "password": DEMO_PASSWORD}).encode()
    with opener.open(urllib.request.Request(url.rstrip("/") + "/signin", data=body), timeout=30) as response:
        page = response.read().decode()
        if response.status != 200 or "/signin" in response.url or "_dash-config" not in page:
            raise StepFailed(f"signing in as alice did not open the console (at {response.url}, HTTP {response.status})")


def check_bills(url: str, token: str) -> int:
    """alice's token lists acme's bills, and only acme's; returns how many."""
    request = urllib.request.Request(url.rstrip("/") + "/api/v1/bills", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            bills = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise StepFailed(f"GET /api/v1/bills with alice's token answered {exc.code}: {exc.read()[:300]!r}") from None
    tenants = {bill["tenant"] for bill in bills}
    if not bills or tenants != {"acme"}:
        raise StepFailed(f"alice's token should see acme's bills only, saw tenants {sorted(tenants)} in {len(bills)} bill(s)")
    return len(bills)


def stop(process: subprocess.Popen, data_dir: Path) -> None:
    """SIGTERM, as systemd or a container runtime would send: the demo and its simulators end."""
    state = data_dir / "bmcsim" / "bmcs.json"
    simulators = [p["pid"] for p in json.loads(state.read_text())["processes"]] if state.exists() else []
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(60)
    except subprocess.TimeoutExpired:
        raise StepFailed("the demo did not stop within 60 s of SIGTERM") from None
    if status != 0:
        raise StepFailed(f"the demo exited {status} on SIGTERM")
    time.sleep(0.5)
    alive = [pid for pid in simulators if Path(f"/proc/{pid}").exists()]
    if alive:
        raise StepFailed(f"SIGTERM left the BMC simulator running (pids {alive})")


def run(timeout: float, keep: bool) -> None:
    readme = (ROOT / "README.md").read_text()
    command = first_command(readme)
    if not command.endswith(" demo"):
        raise StepFailed(f"README's first command is expected to start the demo, not {command!r}")
    if not port_free(8080):
        raise StepFailed("port 8080 (the demo's default) is in use: free it to run README's first command as written")
    work = Path(tempfile.mkdtemp(prefix="kiln-readme-"))
    started = time.monotonic()
    process = None
    try:
        clone = work / "kiln"
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
        data_dir = work / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
        env["KILN_DATA_DIR"] = str(data_dir)  # DATA_DIR/demo: not the user's ~/.local/share/kiln
        log = work / "demo.log"
        say(f"running {command!r} in a fresh clone ({clone})")
        with log.open("w") as out:
            # `exec`: the shell becomes the command (kiln.sh in turn execs kiln), so the signal
            # below reaches the demo itself, as `kill PID` or systemd's main-PID stop would
            process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=clone, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        banner = wait_ready(process, log, timeout)
        ready_s = time.monotonic() - started
        url = re.search(r"ready at (http://\S+)", banner).group(1)
        say(f"ready at {url} after {ready_s:.0f} s (clone, venv, install, seed, backfill)")
        if not (clone / ".venv" / "bin" / "kiln").exists():
            raise StepFailed("the command did not create the clone's own .venv")
        check_console(url)
        say("console: signed in as alice through the form, console page served")
        advice = re.search(r"API tokens: (KILN_DATA_DIR=(\S+)) kiln tokens create USER", banner)
        if not advice:
            raise StepFailed("the banner does not say how to create an API token")
        made = subprocess.run(["./scripts/kiln.sh", "tokens", "create", "alice"], cwd=clone,
                              env={**env, "KILN_DATA_DIR": advice.group(2)}, capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            raise StepFailed(f"`{advice.group(1)} kiln tokens create alice` failed: {made.stderr.strip()}")
        say(f"alice's token sees {check_bills(url, made.stdout.strip())} bill(s), all acme's")
        stop(process, Path(advice.group(2)))
        process = None
        say(f"stopped with SIGTERM; simulators gone. README step took {time.monotonic() - started:.0f} s")
    finally:
        if process is not None:  # a step failed: whatever is left of the command's session goes
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for `ready` (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone and its log")
    args = parser.parse_args()
    try:
        run(args.timeout, args.keep)
    except (StepFailed, subprocess.CalledProcessError) as exc:
        print(f"readme-demo: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
