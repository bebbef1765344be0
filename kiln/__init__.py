"""Kiln: provision, watch, meter, price and show a bare-metal GPU fleet."""

from typing import Any


def __getattr__(name: str) -> Any:
    """`kiln.__version__`, read from the installed metadata when first asked for: importing
    importlib.metadata is a noticeable part of every short command's start-up."""
    if name != "__version__":
        raise AttributeError(f"module 'kiln' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("kiln")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0+source"
    globals()["__version__"] = found
    return found
