"""`kiln serve`, `kiln migrate`, `kiln worker`, `kiln demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from kiln import __version__
from kiln.cli.common import engine_for, settings
from kiln.schema import ensure_current, migrate_to, schema_status, upgrade
from kiln.settings import load_settings, resolve_secret_key


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port to listen on."),
    dev: bool = typer.Option(False, "--dev", help="Development mode: generated secret key, migrate on start."),
) -> None:
    """Serve the API (and console) until interrupted."""
    config = load_settings(dev=dev or None)
    resolve_secret_key(config)
    engine = engine_for(config)
    if config.dev:
        upgrade(engine)
    ensure_current(engine)
    import uvicorn  # imported here so other commands start quickly

    from kiln.app import create_app
    from kiln.long_lived import serve_long_lived

    app = create_app(config, engine=engine)
    serve_long_lived(app)
    typer.echo(f"Kiln {__version__} serving on http://{host}:{port} (API docs: /api/v1/docs)")
    # log_config=None: uvicorn's own records go through Kiln's handler (format, redaction, request id)
    uvicorn.run(app, host=host, port=port, log_level=config.log_level.lower(), log_config=None)


def migrate(
    to: str = typer.Option("head", "--to", help="Target revision (`base` removes everything); older ones migrate down."),
    status: bool = typer.Option(False, "--status", help="Only print where the schema stands."),
) -> None:
    """Create or upgrade the database schema (or move it to a given revision)."""
    engine = engine_for(settings())
    try:
        if status:
            current = schema_status(engine)
            typer.echo(f"current: {current.current or 'none'}  head: {current.head}")
            typer.echo(current.problem() or "schema is current")
            return
        typer.echo(f"database schema at {migrate_to(engine, to) or 'base'}")
    finally:
        engine.dispose()


def worker() -> None:
    """Run the periodic jobs (node state sync; collectors as they arrive) until interrupted."""
    from kiln.logs import configure_logging
    from kiln.telemetry import configure_tracing
    from kiln.worker import run_forever

    config = load_settings()
    configure_logging(config.log_level, config.log_format)
    configure_tracing(config.otlp_endpoint, "kiln-worker")
    engine = engine_for(config)
    ensure_current(engine)
    typer.echo(f"Kiln {__version__} worker started")
    run_forever(config, engine)


def demo(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, min=1, max=65535, help="TCP port to listen on."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Where the demo keeps its database (default: DATA_DIR/demo)."),
) -> None:
    """Run the whole appliance on a simulated fleet (no external services) until Ctrl-C or SIGTERM."""
    import logging
    import signal

    from dashboards.demo.run import run_demo
    from kiln.logs import configure_logging

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (systemd, a container runtime, `kill`) stops it as Ctrl-C does

    configure_logging(logging.WARNING, settings().log_format)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        run_demo(host, port, (data_dir or settings().data_dir / "demo").resolve(), say=typer.echo)
    except KeyboardInterrupt:  # uvicorn re-raises the signal once it has shut down; the simulators are stopped
        typer.echo("demo stopped")
