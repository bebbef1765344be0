"""The `kiln` command line, and `kiln version` (here: it needs nothing else)."""

import typer


def version() -> None:
    """Print Kiln's version."""
    from kiln import __version__

    typer.echo(f"kiln {__version__}")
