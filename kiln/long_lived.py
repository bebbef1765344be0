"""Keep the objects that live as long as the process out of the garbage collector's full passes.

Python's cyclic collector walks every object it tracks on each full (oldest-generation) pass.
After start-up that is ~160,000 objects (modules, SQLAlchemy mappers, pydantic schemas, and once
built, the console's Dash layouts and callbacks), walked again whenever a request allocates
enough to trigger a pass: measured in process, 70–125 ms of the 0.36–0.40 s the usage page for
2,000 tenants takes to build at 10,000 nodes (16 ms once they are frozen). `freeze_long_lived`
moves the objects that exist now into the permanent generation that collections skip; what
requests and jobs allocate afterwards is collected as before.

Called by the long-running processes only (`kiln serve` and `kiln demo` once their app is built
and again after the console's first build, `kiln worker` once its jobs are set up), never by
tests or short commands: frozen objects are never freed, so garbage frozen with them would stay.
"""

from __future__ import annotations

import gc
from typing import Any


def freeze_long_lived() -> int:
    """Collect what start-up left as garbage, then freeze every object tracked now; the number of
    objects frozen in all (`gc.get_freeze_count`)."""
    gc.collect()  # garbage frozen would never be freed
    gc.freeze()
    return gc.get_freeze_count()


def serve_long_lived(app: Any) -> int:
    """Mark `app` as served by a long-running process, so the console freezes its objects once
    built (`dashboards.mount`), and freeze what exists now; the number of objects frozen in all."""
    app.state.freeze_long_lived = True
    return freeze_long_lived()
