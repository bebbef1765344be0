"""`kiln backup`, `kiln restore`, `kiln doctor`: operating a Kiln installation."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kiln.cli.common import OutputFormat, OutputOption, console, settings


def _passphrase(path: Path | None) -> str | None:
    if path is None:
        return None
    from kiln.backup import BackupError

    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise BackupError(f"cannot read the passphrase file {path}: {exc.strerror}") from None
    if not text:
        raise BackupError(f"the passphrase file {path} is empty")
    return text


PassphraseOption = typer.Option(
    None, "--passphrase-file", help="File holding a passphrase: the backup then carries the secret key, "
    "encrypted with it (restore: decrypts it).", dir_okay=False)


def backup(
    out: Path = typer.Option(..., "--out", help="Archive to write (.tar.gz); replaced atomically.", dir_okay=False),
    passphrase_file: Path | None = PassphraseOption,
) -> None:
    """Back up the database (a consistent snapshot) and the settings into one archive."""
    from kiln.backup import create_backup

    manifest = create_backup(settings(), out, passphrase=_passphrase(passphrase_file))
    typer.echo(f"backup written to {out}: {manifest.database} database at schema {manifest.schema_revision}, "
               f"secret key {manifest.secret_key}")


def restore(
    file: Path = typer.Argument(..., help="A backup made by `kiln backup`.", dir_okay=False),
    force: bool = typer.Option(False, "--force", help="Replace the contents of a non-empty database."),
    passphrase_file: Path | None = PassphraseOption,
) -> None:
    """Restore a backup into the configured database (empty, unless --force). Stop Kiln first."""
    from kiln.backup import restore_backup

    report = restore_backup(settings(), file, force=force, passphrase=_passphrase(passphrase_file))
    typer.echo(f"restored the {report.database} database at schema {report.schema_revision} from {file}")
    if report.secret_key_file:
        typer.echo(f"the backed-up secret key was written to {report.secret_key_file} (mode 0600)")
    if report.settings_file:
        typer.echo(f"the backed-up settings file is in {report.settings_file}: compare it with your config")
    if report.needs_migrate:
        typer.echo(f"the schema is older than this Kiln's ({report.head_revision}): run `kiln migrate`")


def doctor(output: OutputFormat = OutputOption) -> None:
    """Check every configured peer (database, Prometheus, Ironic, Kubernetes, OpenCost, OIDC, BMCs)."""
    from rich.table import Table
    from rich.text import Text

    from kiln.doctor import STATUS_FAILED, run_checks

    checks = run_checks(settings())
    if output == OutputFormat.json:
        typer.echo(json.dumps([check.as_dict() for check in checks], indent=2))
    else:
        table = Table(title="kiln doctor")
        for column in ("peer", "target", "status", "detail", "seconds"):
            table.add_column(column)
        colours = {"ok": "green", STATUS_FAILED: "red", "not configured": "dim"}  # warnings in yellow
        for check in checks:
            colour = colours.get(check.status, "yellow")
            table.add_row(check.peer, check.target or "-", Text(check.status, style=colour), check.detail,
                          f"{check.seconds:.2f}")
        console.print(table)
    failed = [check for check in checks if check.status == STATUS_FAILED]
    if failed:
        raise typer.Exit(1)
