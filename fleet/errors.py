"""Turn a driver's error into a Kiln error that names the node and keeps the backend's words."""

from __future__ import annotations

from fleet.provisioning.base import DriverError
from kiln.errors import BadGateway, BadRequest, Conflict, KilnError, NotFound

_BY_STATUS: dict[int, type[KilnError]] = {400: BadRequest, 404: NotFound, 409: Conflict}


def backend_error(node_name: str, action: str, error: DriverError) -> KilnError:
    """`cannot ACTION node NAME: <the backend's message>` with a fitting status."""
    kind = _BY_STATUS.get(error.status, BadGateway)
    return kind(f"cannot {action} node {node_name}: {error}")
