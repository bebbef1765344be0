"""Entry point of the `kiln` command: sub-commands, and errors as one line on stderr.

Sub-commands are imported only when used (kiln.cli.lazy): `kiln version` loads no database
code and `kiln nodes list` none of the console's. Start-up runs without the cyclic garbage
collector: importing a command's modules creates ~75,000 long-lived objects, and each full
collection pass on the way walked them all again (with the passes at exit, ~90 ms of `kiln
nodes list`'s ~0.57 s). Once the command's module is loaded, what exists is frozen out of
future passes (`gc.freeze`: a few hundred objects of import-time garbage stay with it) and the
collector is back on for the command's own work, however long it runs.
"""

from __future__ import annotations

import gc
import os
import sys

import typer
from typer._click import exceptions as click  # Typer vendors its own click

from kiln.cli.lazy import lazy_group
from kiln.errors import KilnError

# Every sub-command, in `kiln --help` order: where it lives, imported only when used.
SUBCOMMANDS = {
    "serve": "kiln.cli.server:serve",
    "migrate": "kiln.cli.server:migrate",
    "worker": "kiln.cli.server:worker",
    "demo": "kiln.cli.server:demo",
    "version": "kiln.cli:version",
    "backup": "kiln.cli.ops:backup",
    "restore": "kiln.cli.ops:restore",
    "doctor": "kiln.cli.ops:doctor",
    "tenants": "kiln.cli.accounts:tenants_app",
    "users": "kiln.cli.accounts:users_app",
    "tokens": "kiln.cli.accounts:tokens_app",
    "nodes": "fleet.cli:nodes_app",
    "vdcs": "fleet.tenancy_cli:vdcs_app",
    "leases": "fleet.tenancy_cli:leases_app",
    "bills": "metering.cli:bills_app",
    "price-cards": "metering.cli:price_cards_app",
    "budgets": "metering.cli:budgets_app",
    "export": "metering.cli:export_app",
    "carbon": "metering.carbon_cli:carbon_app",
    "firmware": "fleet.firmware_cli:firmware_app",
    "collect": "collectors.cli:collect_app",
    "db": "kiln.cli.db:db_app",
}


def _start_up_done() -> None:
    """A command's modules are loaded: freeze them out of the collector's passes and turn it back
    on (only where `main` turned it off: a process that imports `app`, such as the tests, is left alone)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


app = typer.Typer(
    name="kiln",
    help="Kiln: provision, watch, meter, price and show a bare-metal GPU fleet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=lazy_group(SUBCOMMANDS, on_load=_start_up_done),
)


@app.callback()
def _global_options(
    config: str = typer.Option(None, "--config", help="TOML or YAML config file (same as KILN_CONFIG)."),
) -> None:
    if config:
        from kiln.settings import CONFIG_ENV

        os.environ[CONFIG_ENV] = config


class _NeverRaised(Exception):
    """Stands for an error class whose module was never imported: nothing can have raised one."""


def _error_class(module: str, name: str) -> type[Exception]:
    """`module.name`, if that module was imported (otherwise no such error can have been raised)."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name) if loaded else _NeverRaised


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"kiln: error: {message}\n")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line on stderr and exit non-zero."""
    gc.disable()  # until the command's modules are loaded (see the module docstring)
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
    except (KilnError, _error_class("kiln.settings", "ConfigError"), _error_class("kiln.schema", "SchemaError")) as exc:
        _fail(str(exc), 1)
    except _error_class("sqlalchemy.exc", "OperationalError") as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        _fail(f"cannot use the database ({reason}): check KILN_DATABASE_URL and that the server is up", 1)
    finally:
        gc.enable()  # a command that failed before it was loaded (a usage error) left it off
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
