"""The console at fleet scale: time from navigation to charts drawn, page by page, in headless Chromium.

    python -m benchmarks.console [--nodes 1000 --tenants 200 --months 12 | --quick] [--repeat N]
                                 [--database sqlite|postgresql] [--database-url URL]

Set-up (not timed): a fresh database gets a year of a fleet (`benchmarks.console_seed`: bulk
inserts into Kiln's tables, then metering's own bills run for every period), cached by the
parameters, the month and the seeding code (`benchmarks.console_db`: a SQLite data dir under
`~/.cache/kiln/console-bench/`, or with `--database postgresql` a database kept on the
PostgreSQL peer's server, or `--database-url`'s, named by a `seeded.json` there); a re-run in
the same month starts from a copy of it. `kiln serve --dev` serves the copy on a loopback port.

Timed: for each page, in Debian's Chromium through Playwright (signed in once per persona),
a fresh tab's `goto(url)` until every chart of the page is drawn (a Plotly SVG with marks or
an empty-state note) and Dash has no callback in flight — the first of `--repeat + 1` loads is
a warm-up (reported as `first_load_s`), the median of the rest is reported. Each persona's
browser has its own persistent profile, as a user's browser does: after the first visit the
scripts (~3 MB: Dash, React, AG Grid, plotly.js) come from its disk cache with V8's compiled
code. Timed in the same rounds: the same load in a private window (`private_tab_s`: its cache
is in memory and Chromium keeps no compiled code for it, so each tab compiles the scripts
again) and in-app navigation (what clicking a console link does: push the URL, Dash fetches
the page, charts drawn) from another page of the same user (`in_app_s`). Baseline: the same
page's data from the HTTP API alone (the GETs a client would make for it, one after the other,
bearer token, JSON decoded), median of as many runs. Target: every page ≤ 1.5 s.

Then the hour that follows a bills run: `kiln bills run` for the running period in its own
process (as the worker's hourly job), which invalidates what the server remembers of bill and
usage sums; then one fresh-tab load of each page in turn (`after_bills_s`: each page's first
load after the run; a page whose sums an earlier page already computed gets them warm, as it
would in production); then another bills run and one round of the API calls
(`baseline_after_bills_s`, the baseline with the same caches).

`--quick` (a smoke run under a minute) has one timed round and no private windows
(`private_tab_s` null).

One JSON line on stdout: `kiln_s` is the slowest page's fresh-tab time, `baseline_s` that
page's API time, `ratio` their quotient, `in_app_s`, `private_tab_s` and `after_bills_s` the
slowest of those, and `pages` every page's figures; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 1.5
# Time the server took for the page's Dash requests (page layout and callbacks): request start to response end.
SERVER_JS = """() => performance.getEntriesByType('resource')
  .filter(e => e.name.includes('/_dash-update-component'))
  .reduce((total, e) => total + (e.responseEnd - e.requestStart), 0) / 1000"""
DRAWN_JS = """(minimum) => {
  const charts = Array.from(document.querySelectorAll('.js-plotly-plot:not([data-bench-stale])'));
  const drawn = charts.filter(el => el.querySelector('.main-svg') &&
    (el.querySelectorAll('.scatterlayer path.js-line, .barlayer path, .scatterlayer .point').length ||
     el.querySelector('.annotation-text')));
  return drawn.length >= minimum && !document.querySelector('[data-dash-is-loading="true"]');
}"""


# What a dcc.Link click does: push the URL and tell dcc.Location; the old page's charts are marked
# so that only the new page's count as drawn.
NAVIGATE_JS = """(path) => {
  document.querySelectorAll('.js-plotly-plot').forEach(el => el.setAttribute('data-bench-stale', ''));
  window.history.pushState({}, '', path);
  window.dispatchEvent(new CustomEvent('_dashprivate_pushstate'));
}"""


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[console] {message}", file=sys.stderr, flush=True)


def pages(seeded: dict) -> list[dict[str, Any]]:
    """Every console page, who opens it, how many charts it draws (or the `ready` selector of a page
    without charts), the API calls that give its data, and the page of the same user that in-app
    navigation to it starts from."""
    current, previous, node = seeded["periods"][-1], seeded["periods"][-2], seeded["node_name"]
    bill, node_id = seeded["bill_id"], seeded["node_id"]
    costs_api = [f"/api/v1/bills?period={current}", "/api/v1/budgets", f"/api/v1/budgets/alerts?period={current}",
                 f"/api/v1/usage/totals?period={current}"]
    return [
        {"page": "fleet", "user": "admin", "path": "/fleet", "charts": 4, "api": ["/api/v1/nodes"], "from": "/vdcs"},
        {"page": "node", "user": "admin", "path": f"/nodes/{node}", "charts": 7, "from": "/fleet",
         "api": [f"/api/v1/nodes/{node_id}", f"/api/v1/nodes/{node_id}/events", f"/api/v1/nodes/{node_id}/health"]},
        {"page": "vdcs", "user": "admin", "path": "/vdcs", "charts": 1, "api": ["/api/v1/vdcs"], "from": "/fleet"},
        {"page": "usage", "user": "member", "path": "/usage", "charts": 3, "from": "/costs",
         "api": ["/api/v1/leases?active=true", "/api/v1/vdcs", f"/api/v1/usage/efficiency?period={current}"]},
        {"page": "usage (all tenants)", "user": "admin", "path": "/usage", "charts": 3, "from": "/costs",
         "api": ["/api/v1/leases?active=true", "/api/v1/vdcs", f"/api/v1/usage/efficiency?period={current}"]},
        {"page": "costs (tenant)", "user": "member", "path": "/costs", "charts": 3, "api": costs_api, "from": "/usage"},
        {"page": "bill detail", "user": "member", "path": f"/costs/bills/{bill}", "charts": 0, "ready": "#bill-lines td",
         "api": [f"/api/v1/bills/{bill}"], "from": "/usage"},
        {"page": "costs (all tenants)", "user": "admin", "path": "/costs", "charts": 3, "api": costs_api, "from": "/usage"},
        {"page": "finance", "user": "finance", "path": "/finance", "charts": 4, "from": "/costs",
         "api": [f"/api/v1/bills?period={previous}", f"/api/v1/bills/idle?period={previous}",
                 f"/api/v1/usage/reconciliation?period={previous}"]},
    ]


def _kiln_env(database: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "KILN_LOG_LEVEL": "WARNING"}
    env.pop("KILN_DATABASE_URL", None)
    return {**env, **database}


def run_bills_now(database: dict[str, str], period: str) -> float:
    """`kiln bills run --period PERIOD` in its own process, as the worker's hourly job runs it; seconds."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "kiln.cli.main", "bills", "run", "--period", period], cwd=REPO,
                          env=_kiln_env(database), capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"kiln bills run failed: {done.stderr[-2000:]}")
    return round(time.monotonic() - began, 1)


def sum_utilisation_now(database: dict[str, str]) -> float:
    """The worker's `utilisation-days` job, run once in its own process (a running worker has
    summed the samples up to 10-25 minutes ago; the cached data set was seeded earlier); seconds."""
    began = time.monotonic()
    code = ("from kiln.settings import Settings; from kiln.db import create_db_engine; "
            "from collectors.utilisation_days import seal_job; "
            "seal_job(create_db_engine(Settings().resolved_database_url))()")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_kiln_env(database), capture_output=True, text=True,
                          timeout=1800)
    if done.returncode:
        raise RuntimeError(f"the utilisation-days job failed: {done.stderr[-2000:]}")
    return round(time.monotonic() - began, 1)


def start_server(database: dict[str, str], port: int) -> subprocess.Popen:
    """`kiln serve --dev` on the database (its own process, so its memory is Kiln's alone)."""
    env = _kiln_env(database)
    process = subprocess.Popen([sys.executable, "-m", "kiln.cli.main", "serve", "--dev", "--port", str(port)], cwd=REPO,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kiln serve exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("kiln serve did not become ready in 60 s")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def time_pages(base: str, plan: list[dict], repeat: int, password: str,
               bills_run: Any = None, private_windows: bool = True) -> dict[str, dict[str, list[float]]]:
    """Per page and measure, the seconds of each timed round (the warm-up round only under `cold`):
    `load` a fresh tab's navigation to charts drawn in the user's browser (a persistent profile),
    `private` the same in a private window, `server` the time the server spent on the load's Dash
    requests, `navigate` in-app navigation (a dcc.Link click) from the page's `from` (`private` and
    `navigate` in the timed rounds only; `private` not without `private_windows`); then, when
    `bills_run` is given, it is called and each page loaded once more in a fresh tab (`after_bills`)."""
    from tests.browser import launch_browser, launch_profile, playwright_session, sign_in

    measured: dict[str, dict[str, list[float]]] = {
        p["page"]: {"load": [], "cold": [], "private": [], "server": [], "navigate": [], "after_bills": []} for p in plan}
    viewport = {"width": 1400, "height": 1000}
    with playwright_session() as playwright, tempfile.TemporaryDirectory(prefix="kiln-console-profiles-") as profiles:
        private_browser = launch_browser(playwright)
        own, private = {}, {}
        for user in sorted({p["user"] for p in plan}):
            own[user] = launch_profile(playwright, Path(profiles) / user, viewport=viewport)
            private[user] = private_browser.new_context(viewport=viewport)
            for context in (own[user], private[user]) if private_windows else (own[user],):
                page = context.new_page()
                sign_in(page, base, user, password, "/usage")
                page.wait_for_url(f"{base}/usage")
                page.close()
        for round_ in range(repeat + 1):
            for item in plan:
                figures = measured[item["page"]]
                def goto(page: Any, item: dict = item) -> None:
                    page.goto(f"{base}{item['path']}", wait_until="commit")
                load = _drawn_after(own[item["user"]], item, goto)
                figures["load" if round_ else "cold"].append(load[0])
                figures["server"].append(load[1])
                if not round_:  # the warm-up fills the browser's and the server's caches; in-app and private reuse them
                    continue
                figures["navigate"].append(_drawn_after(own[item["user"]], item, lambda page, item=item: page.evaluate(
                    NAVIGATE_JS, item["path"]), start=f"{base}{item['from']}")[0])
                if private_windows:
                    figures["private"].append(_drawn_after(private[item["user"]], item, goto)[0])
            if round_:
                log(f"round {round_}: " + ", ".join(
                    f"{p}={m['load'][-1]:.2f}s/{m['navigate'][-1]:.2f}s" + (f"/{m['private'][-1]:.2f}s" if m["private"] else "")
                    for p, m in measured.items()) + " (fresh tab / in-app" + (" / private window)" if private_windows else ")"))
        if bills_run is not None:
            bills_run()
            for item in plan:
                measured[item["page"]]["after_bills"].append(_drawn_after(
                    own[item["user"]], item, lambda page, item=item: page.goto(f"{base}{item['path']}", wait_until="commit"))[0])
            log("first load after a bills run: " + ", ".join(f"{p}={m['after_bills'][-1]:.2f}s" for p, m in measured.items()))
        for context in own.values():
            context.close()
        private_browser.close()
    return measured


def _drawn_after(context: Any, item: dict, go: Any, start: str | None = None) -> tuple[float, float]:
    """Seconds from `go(page)` until the item's charts are drawn in a new tab (opened at `start`
    first, if given), and the seconds the server spent on the tab's Dash requests."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    if start:
        page.goto(start)
        page.wait_for_function(DRAWN_JS, arg=1, timeout=60_000, polling="raf")
    began = time.perf_counter()
    go(page)
    page.wait_for_function(DRAWN_JS, arg=item["charts"], timeout=60_000, polling="raf")
    if item.get("ready"):  # a page without charts (the bill): drawn when its table is
        page.wait_for_selector(item["ready"], timeout=60_000)
    seconds = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{item['page']}: {errors}")
    server = page.evaluate(SERVER_JS)
    page.close()
    return seconds, server


def time_api(base: str, plan: list[dict], repeat: int, tokens: dict[str, str], *, warm_up: bool = True
             ) -> dict[str, list[float]]:
    """Seconds the same data takes from the HTTP API alone, per page (the warm-up round excluded;
    without `warm_up` one round, timed)."""
    import httpx

    times: dict[str, list[float]] = {p["page"]: [] for p in plan}
    with httpx.Client(base_url=base, timeout=120) as client:
        for round_ in range(repeat + 1) if warm_up else (1,):
            for item in plan:
                headers = {"Authorization": f"Bearer {tokens[item['user']]}"}
                began = time.perf_counter()
                for path in item["api"]:
                    response = client.get(path, headers=headers)
                    response.raise_for_status()
                    response.json()
                if round_:
                    times[item["page"]].append(time.perf_counter() - began)
    return times


@contextlib.contextmanager
def served_database(args: argparse.Namespace, nodes: int, tenants: int, months: int, tmp: Path
                    ) -> Iterator[tuple[dict[str, str], dict]]:
    """(the server's environment, seeded): a copy of the cached data set on SQLite or PostgreSQL."""
    from benchmarks.billing import postgres
    from benchmarks.console_db import postgresql_database, sqlite_database
    from kiln.db import utcnow

    now = utcnow().replace(minute=0, second=0, microsecond=0)
    if args.database == "sqlite":
        with sqlite_database(nodes, tenants, months, now, log) as served:
            yield served
        return
    with postgres(args.database_url, tmp / "postgres") as server, \
            postgresql_database(nodes, tenants, months, now, log, server) as served:
        yield served


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--months", type=int, default=12, help="ended months before the running one")
    parser.add_argument("--quick", action="store_true",
                        help="50 nodes, 20 tenants, 2 months, one timed round, no private windows")
    parser.add_argument("--repeat", type=int, help="timed rounds after the warm-up (default 3; 1 with --quick)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="where the data set lives (postgresql: the PostgreSQL peer, or --database-url's server)")
    parser.add_argument("--database-url", help="a PostgreSQL server to keep the data set on (its role creates databases)")
    args = parser.parse_args(argv)
    from benchmarks.console_seed import GPUS_PER_NODE, PASSWORD
    from tests.browser import free_port

    nodes, tenants, months = (50, 20, 2) if args.quick else (args.nodes, args.tenants, args.months)
    args.repeat = args.repeat or (1 if args.quick else 3)
    scale = f"{nodes} nodes x {GPUS_PER_NODE} GPUs, {tenants} tenants, {months} months + the running one, {args.database}"
    log(scale)
    with tempfile.TemporaryDirectory(prefix="kiln-console-peer-") as tmp, \
            served_database(args, nodes, tenants, months, Path(tmp)) as (database, seeded):
        log(f"utilisation-days job: {sum_utilisation_now(database)} s")
        port = free_port()
        server = start_server(database, port)
        base = f"http://127.0.0.1:{port}"
        try:
            plan = pages(seeded)
            period, bills_s = seeded["periods"][-1], []

            def bills_run() -> None:
                bills_s.append(run_bills_now(database, period))
                log(f"kiln bills run --period {period}: {bills_s[-1]} s")

            measured = time_pages(base, plan, args.repeat, PASSWORD, bills_run, private_windows=not args.quick)
            api_times = time_api(base, plan, args.repeat, seeded["tokens"])
            bills_run()
            api_after_bills = time_api(base, plan, 0, seeded["tokens"], warm_up=False)
            peak = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    report = {p["page"]: {"path": p["path"], "as": p["user"], "kiln_s": _median(measured[p["page"]]["load"]),
                          "in_app_s": _median(measured[p["page"]]["navigate"]), "in_app_from": p["from"],
                          "private_tab_s": _median(measured[p["page"]]["private"]) if measured[p["page"]]["private"] else None,
                          "baseline_s": _median(api_times[p["page"]]), "api_calls": len(p["api"]),
                          "first_load_s": round(measured[p["page"]]["cold"][0], 3),
                          "after_bills_s": round(measured[p["page"]]["after_bills"][0], 3),
                          "baseline_after_bills_s": round(api_after_bills[p["page"]][0], 3),
                          "callbacks_s": _median(measured[p["page"]]["server"])}
              for p in plan}
    for figures in report.values():
        figures["ratio"] = round(figures["kiln_s"] / figures["baseline_s"], 2)
    slowest = max(report, key=lambda name: report[name]["kiln_s"])
    worst = report[slowest]
    print(json.dumps({
        "benchmark": "console",
        "scale": scale,
        "kiln_s": worst["kiln_s"],
        "baseline": f"the same page's data from the HTTP API alone ({slowest}: {worst['api_calls']} GETs)",
        "baseline_s": worst["baseline_s"],
        "ratio": worst["ratio"],
        "peak_rss_mb": peak,
        "slowest_page": slowest,
        "target_s": TARGET_S,
        "target_met": all(f["kiln_s"] <= TARGET_S for f in report.values()),
        "in_app_s": max(f["in_app_s"] for f in report.values()),
        "in_app_target_met": all(f["in_app_s"] <= TARGET_S for f in report.values()),
        "private_tab_s": None if args.quick else max(f["private_tab_s"] for f in report.values()),
        "private_target_met": None if args.quick else all(f["private_tab_s"] <= TARGET_S for f in report.values()),
        "after_bills_s": max(f["after_bills_s"] for f in report.values()),
        "after_bills_target_met": all(f["after_bills_s"] <= TARGET_S for f in report.values()),
        "after_bills_slowest_page": max(report, key=lambda name: report[name]["after_bills_s"]),
        "bills_run_now_s": bills_s,
        "pages": report,
        "usage_rows": seeded["rows"].get("usage_record"),
        "seed_rows": seeded["rows"],
        "bills_run_s": seeded.get("seed_s"),
        "repeat": args.repeat,
        "database": args.database,
        "setup_s": seeded.get("setup_s"),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }))
    return 0 if report else 1


if __name__ == "__main__":
    sys.exit(main())
