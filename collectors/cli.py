"""`kiln collect once`: run one collector now, persist what it got, report each target.

    kiln collect once --collector ipmi --nodes gpu-001,gpu-002
    kiln collect once --collector dcgm --output json     # one JSON object per target per line
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from collectors.base import skipped_summary
from kiln.cli.common import (
    OutputFormat,
    OutputOption,
    console,
    engine_for,
    progress_bar,
    settings,
)
from kiln.errors import ValidationFailed
from kiln.schema import ensure_current

if TYPE_CHECKING:
    from collectors.cycle import CycleReport

collect_app = typer.Typer(help="Run collectors by hand (the worker runs them on a schedule).", no_args_is_help=True)

# what each collector needs before it can run, for the error when it is not configured
REQUIREMENTS = {"ipmi": "", "redfish": "", "dcgm": "KILN_PROMETHEUS_URL", "rocm": "KILN_PROMETHEUS_URL",
                "kubernetes": "KILN_KUBECONFIG", "opencost": "KILN_OPENCOST_URL",
                "dcgm-exporter": "KILN_DCGM_EXPORTER_URLS", "rocm-exporter": "KILN_ROCM_EXPORTER_URLS"}


@collect_app.command("once")
def once(
    collector: str = typer.Option("ipmi", "--collector", "-c", help=f"One of: {', '.join(REQUIREMENTS)}; several "
                                  "separated by commas (ipmi,redfish: both BMC collectors, one after the other)."),
    nodes: list[str] = typer.Option(None, "--nodes", "-n",
                                    help="Only these targets (node names for ipmi and redfish); repeat or separate with commas."),
    output: OutputFormat = OutputOption,
) -> None:
    """Collect once from every target (or the named ones); exit 1 if any target failed."""
    names = list(dict.fromkeys(c.strip() for c in collector.split(",") if c.strip()))
    unknown = [c for c in names if c not in REQUIREMENTS] or ([] if names else [collector])
    if unknown:
        raise ValidationFailed("--collector", f"unknown collector {unknown[0]!r}: expected one of {', '.join(REQUIREMENTS)}")
    # imported here: the collectors' clients (kubernetes, prometheus-api-client) load slowly,
    # and every other `kiln` command would pay for them
    from collectors.cycle import UnknownTargets
    from collectors.sources import build_sources
    from fleet.runtime import FleetRuntime

    config = settings()
    engine = engine_for(config)
    reports = []
    try:
        ensure_current(engine)
        sources = build_sources(config, engine, FleetRuntime.build(config, engine).box, one_shot=True)
        missing = [c for c in names if c not in sources]
        if missing:
            raise ValidationFailed("--collector", f"collector {missing[0]} is not configured: set {REQUIREMENTS[missing[0]]}")
        only = [name.strip() for item in nodes or [] for name in item.split(",") if name.strip()]
        try:
            for name in names:
                reports.append(_run(engine, sources[name], only, show_progress=output == OutputFormat.table))
        except UnknownTargets as exc:
            raise ValidationFailed("--nodes", str(exc)) from None
        finally:
            for source in sources.values():
                source.close()
    finally:
        engine.dispose()
    for report in reports:
        _print(report, output)
    if any(not r.ok for report in reports for r in report.results):
        raise typer.Exit(1)


def _run(engine, source, only, *, show_progress: bool) -> CycleReport:
    from collectors.cycle import pick_targets, run_cycle

    if not show_progress:
        return run_cycle(engine, source, only=only or None)
    targets = pick_targets(engine, source, only or None)
    with progress_bar() as bar:
        task = bar.add_task(f"{source.name}: collecting", total=len(targets))
        return run_cycle(engine, source, only=targets, progress=lambda _result: bar.advance(task))


def _print(report: CycleReport, output: OutputFormat) -> None:
    if output == OutputFormat.json:
        for r in report.results:
            typer.echo(json.dumps({"collector": report.collector, "target": r.target, "ok": r.ok, "error": r.error, "samples": len(r.samples),
                                   "skipped": r.skipped, "seconds": round(r.seconds, 3), "timed_out": r.timed_out}))
        return
    table = Table(title=f"{report.collector}: {len(report.results)} target(s)")
    for column in ("target", "result", "samples", "skipped", "seconds", "error"):
        table.add_column(column)
    for r in report.results:
        result = "ok" if r.ok else "timed out" if r.timed_out else "failed"
        skipped = "; ".join(f"{count} {why}" for why, count in sorted(r.skipped.items())) or "-"
        error = None if r.error == skipped_summary(r.skipped) else r.error  # not twice in one row
        table.add_row(r.target, result, str(len(r.samples)), skipped, f"{r.seconds:.2f}", error or "-")
    console.print(table)
    counts = report.counts()
    console.print(f"ok {counts['ok']}, failed {counts['failed']}, timed out {counts['timed_out']}")
