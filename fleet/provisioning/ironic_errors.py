"""Ironic's errors, as openstacksdk and keystoneauth raise them, turned into `DriverError`.

The message a user sees is Ironic's own text (its `faultstring`), without the SDK's
"Client Error for url: ..." wrapping, and with the node's UUID replaced by its name. The
status follows `DriverError`: 400 illegal request, 404 gone, 409 conflict or locked, 502
Ironic unreachable, failing (5xx) or refusing Kiln's credentials.
"""

from __future__ import annotations

import re

from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions

from fleet.provisioning.base import DriverError

# Errors this module understands; the only exceptions the driver catches around SDK calls.
SDK_ERRORS: tuple[type[Exception], ...] = (sdk_exceptions.SDKException, ks_exceptions.ClientException)

_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_PASSED_THROUGH = {400: 400, 404: 404, 409: 409}


def translate(exc: Exception, *, where: str, uuid: str | None = None, name: str | None = None) -> DriverError:
    """A `DriverError` for an SDK/keystoneauth exception raised while talking to Ironic at `where`.

    When both `uuid` and `name` are given, the node's UUID in Ironic's message is replaced by
    its name, so users read the name they know.
    """
    if isinstance(exc, sdk_exceptions.HttpException) and exc.status_code is not None:
        status_code = int(exc.status_code)
        text = _ironic_text(exc)
        if status_code in _PASSED_THROUGH:
            status = _PASSED_THROUGH[status_code]
        elif status_code in (401, 403):
            status, text = 502, f"Ironic at {where} refused Kiln's credentials: {text}"
        elif status_code >= 500:
            status, text = 502, f"Ironic at {where} failed (HTTP {status_code}): {text}"
        else:
            status = 400
    elif isinstance(exc, ks_exceptions.ClientException):
        status, text = 502, f"Ironic at {where} is unreachable: {_connection_reason(exc)}"
    else:
        status, text = 502, f"Ironic at {where} failed: {exc}"
    if uuid and name:
        text = text.replace(uuid, name)
    return DriverError(text, status=status)


def is_conflict(exc: Exception) -> bool:
    """Whether `exc` is Ironic's HTTP 409 (in state-changing calls: NodeLocked, worth retrying)."""
    return isinstance(exc, sdk_exceptions.ConflictException)


def may_resend(exc: Exception, idempotent: bool) -> bool:
    """Whether a request that failed with `exc` may be sent again: its connection was refused
    (the request never reached Ironic), or the connection broke and sending the request twice
    does no harm (`idempotent`). Timeouts are not resent: Ironic may still be working on it."""
    if not isinstance(exc, ks_exceptions.ConnectFailure):
        return False
    return idempotent or _connection_reason(exc) == "Connection refused"


def is_not_found(exc: Exception) -> bool:
    """Whether `exc` is Ironic's HTTP 404."""
    return isinstance(exc, sdk_exceptions.NotFoundException)


def _ironic_text(exc: sdk_exceptions.HttpException) -> str:
    """Ironic's faultstring when the SDK parsed one, else the SDK's message without the URL."""
    details = (exc.details or "").strip()
    if details:
        return details
    message = (exc.message or "").strip()
    return message.split(": Client Error for url:")[0].split(": Server Error for url:")[0] or str(exc)


def _connection_reason(exc: ks_exceptions.ClientException) -> str:
    """The short reason behind a connection failure ("Connection refused", "timed out", ...)."""
    if isinstance(exc, ks_exceptions.ConnectTimeout):
        return "the connection timed out"
    if isinstance(exc, ks_exceptions.RequestTimeout):
        return "it did not answer in time"
    text = str(exc)
    found = _ERRNO.search(text)
    return found.group(1).strip() if found else text
