"""Kiln: provision, watch, meter, price and show a bare-metal GPU fleet."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kiln")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
