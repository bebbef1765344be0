"""Vendor plotly.js's basic bundle (scatter, bar, pie) into the console's assets.

    python scripts/vendor_plotly.py [VERSION]

The console loads `dashboards/assets/vendor/plotly-basic.min.js` (~1.2 MB) with the page
instead of the full plotly.min.js (~4.8 MB) that dcc.Graph would fetch on its first chart:
the full bundle takes about a second of main-thread time to evaluate on a small machine, the
basic one a fifth of that. VERSION defaults to the plotly.js version that the installed
plotly package bundles (they must match: tests/test_console_assets.py checks it). The
tarball comes from the npm registry and is checked against the registry's sha512 integrity.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGE = "plotly.js-basic-dist-min"
REGISTRY = "https://registry.npmjs.org"
VENDOR = Path(__file__).resolve().parents[1] / "dashboards" / "assets" / "vendor"
FILES = {"package/plotly-basic.min.js": "plotly-basic.min.js", "package/LICENSE": "plotly-basic.LICENSE.txt"}


def fetch(url: str) -> bytes:
    """The body of a GET from the registry."""
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def vendor(version: str) -> None:
    """Download, verify and unpack the bundle and its licence into dashboards/assets/vendor/."""
    meta = json.loads(fetch(f"{REGISTRY}/{PACKAGE}/{version}"))
    tarball = fetch(meta["dist"]["tarball"])
    algorithm, _, expected = meta["dist"]["integrity"].partition("-")
    if algorithm != "sha512" or base64.b64encode(hashlib.sha512(tarball).digest()).decode() != expected:
        raise SystemExit(f"vendor_plotly: {PACKAGE}@{version} does not match the registry's integrity")
    VENDOR.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        for member, name in FILES.items():
            (VENDOR / name).write_bytes(archive.extractfile(member).read())
    print(f"vendored {PACKAGE}@{version} into {VENDOR}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        vendor(sys.argv[1])
    else:
        from plotly.offline import get_plotlyjs_version

        vendor(get_plotlyjs_version())
