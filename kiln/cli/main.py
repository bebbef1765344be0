"""Entry point of the `kiln` command: sub-commands, and errors as one line on stderr."""

from __future__ import annotations

import os
import sys

import typer
from sqlalchemy.exc import OperationalError
from typer._click import exceptions as click  # Typer vendors its own click

from collectors.cli import collect_app
from fleet.cli import nodes_app
from fleet.firmware_cli import firmware_app
from fleet.tenancy_cli import leases_app, vdcs_app
from kiln.cli import accounts, ops, server
from kiln.cli.db import db_app
from kiln.errors import KilnError
from kiln.schema import SchemaError
from kiln.settings import CONFIG_ENV, ConfigError
from metering.carbon_cli import carbon_app
from metering.cli import bills_app, budgets_app, export_app, price_cards_app

app = typer.Typer(
    name="kiln",
    help="Kiln: provision, watch, meter, price and show a bare-metal GPU fleet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(server.serve)
app.command()(server.migrate)
app.command()(server.worker)
app.command()(server.demo)
app.command()(server.version)
app.command()(ops.backup)
app.command()(ops.restore)
app.command()(ops.doctor)
app.add_typer(accounts.tenants_app, name="tenants")
app.add_typer(accounts.users_app, name="users")
app.add_typer(accounts.tokens_app, name="tokens")
app.add_typer(nodes_app, name="nodes")
app.add_typer(vdcs_app, name="vdcs")
app.add_typer(leases_app, name="leases")
app.add_typer(bills_app, name="bills")
app.add_typer(price_cards_app, name="price-cards")
app.add_typer(budgets_app, name="budgets")
app.add_typer(export_app, name="export")
app.add_typer(carbon_app, name="carbon")
app.add_typer(firmware_app, name="firmware")
app.add_typer(collect_app, name="collect")
app.add_typer(db_app, name="db")


@app.callback()
def _global_options(
    config: str = typer.Option(None, "--config", help="TOML or YAML config file (same as KILN_CONFIG)."),
) -> None:
    if config:
        os.environ[CONFIG_ENV] = config


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"kiln: error: {message}\n")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line on stderr and exit non-zero."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="kiln", standalone_mode=False)
    except click.NoArgsIsHelpError as exc:
        sys.stdout.write(exc.ctx.get_help() + "\n")
        sys.exit(0)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        _fail(f"{exc.format_message().replace('Value error, ', '')}{hint}", 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code or 1)
    except typer.Abort:
        _fail("aborted", 130)
    except (KilnError, ConfigError, SchemaError) as exc:
        _fail(str(exc), 1)
    except OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        _fail(f"cannot use the database ({reason}): check KILN_DATABASE_URL and that the server is up", 1)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
