"""One exception hierarchy for Kiln, rendered as RFC 9457 problem details over HTTP.

Domain packages subclass these (e.g. `class NodeLocked(Conflict)`); `kiln.api.problems`
turns them into responses and the CLI prints `detail` as one line on stderr.
"""

from __future__ import annotations

from typing import Any


class KilnError(Exception):
    """Base of every error Kiln reports to a user: an HTTP status, a short title and a detail."""

    status: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str, **extensions: Any):
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions

    @property
    def slug(self) -> str:
        """The problem type's short name, e.g. `not-found`."""
        return self.title.lower().replace(" ", "-")


class BadRequest(KilnError):
    status, title = 400, "Bad request"


class Unauthorized(KilnError):
    status, title = 401, "Unauthorized"


class Forbidden(KilnError):
    status, title = 403, "Forbidden"


class NotFound(KilnError):
    status, title = 404, "Not found"


class Conflict(KilnError):
    status, title = 409, "Conflict"


class PayloadTooLarge(KilnError):
    status, title = 413, "Payload too large"


class ValidationFailed(KilnError):
    """Input that parsed but is not acceptable; `errors` lists `{field, message}` pairs."""

    status, title = 422, "Validation failed"

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}", errors=[{"field": field, "message": message}])


class BadGateway(KilnError):
    """A backend Kiln depends on (Ironic, Kubernetes, Prometheus) failed or is unreachable."""

    status, title = 502, "Bad gateway"


class ServiceUnavailable(KilnError):
    status, title = 503, "Service unavailable"
