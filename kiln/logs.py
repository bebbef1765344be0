"""Kiln's logs: text for people or JSON for Loki (`KILN_LOG_FORMAT`), with context and no secrets.

JSON is one object a line (time, level, logger, message, and the request id, user, tenant and
node when known, the trace and span ids when a span is open), as Loki/Grafana Alloy and
the OpenTelemetry Collector's filelog receiver parse it. The context lives in contextvars:
the API middleware (kiln.api.context) sets the request id and its dependencies the user and
tenant; collectors and provisioning operations set the node (`log_context`).

The handler Kiln installs redacts secrets whatever the format (its formatters pass every
line through `redact`, leaving the records themselves untouched for other handlers): bearer
tokens, Authorization and Cookie headers, `password=`-style pairs, passwords in URLs, JWTs,
Kiln API tokens, and every secret this process has decrypted (BMC passwords), so that a
secret logged by mistake is still not written. Standard library only: every command imports it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("request_id", "user", "tenant", "node")
REDACTED = "[REDACTED]"
SHORTEST_REMEMBERED_SECRET = 4  # shorter values would blank ordinary words

# The context of what is being done now; a dict so that code run in a copy of the context
# (FastAPI runs sync dependencies in a thread) can add the user to the request's context.
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("kiln_log_context", default=None)

_SECRET_KEYS = r"(?:password|passwd|passphrase|secret|secret_key|client_secret|token|access_token|refresh_token|id_token|api_key|apikey)"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization / Cookie header values, as a header line, a dict repr or a JSON pair
    (re.compile(r"(?i)((?:proxy-)?authorization|set-cookie|cookie)([\"']?\s*[:=]\s*[\"']?)[^\"'\n]+"), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {REDACTED}"),
    (re.compile(rf"(?i)([\"']?\b{_SECRET_KEYS}\b[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;}}]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+@"), rf"\1{REDACTED}@"),  # scheme://user:PASSWORD@host
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),  # a JWT
    (re.compile(r"\bkiln_(?=[A-Za-z0-9_-]*[A-Z0-9])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"), f"kiln_{REDACTED}"),  # API token
)
_remembered: set[str] = set()


def remember_secret(value: str | None) -> None:
    """Never write `value` in a log line from now on (a decrypted BMC password, a secret setting)."""
    if value and len(value) >= SHORTEST_REMEMBERED_SECRET:
        _remembered.add(value)


def redact(text: str) -> str:
    """`text` with every secret it carries replaced by [REDACTED].

    The patterns go first: a remembered secret that happens to be a key word (a BMC password
    "password") would otherwise turn `password=VALUE` into `[REDACTED]=VALUE`, which no pattern
    then recognises, and VALUE would be written."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    for value in sorted(_remembered, key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return text


class RedactingFormatter(logging.Formatter):
    """The text format (`TEXT_FORMAT`) with every secret in the line, traceback included, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, redacted."""
        return redact(super().format(record))


def current_context() -> dict[str, str]:
    """The log context fields set now (request id, user, tenant, node), without empty ones."""
    return dict(_context.get() or {})


@contextmanager
def log_context(**fields: str | None) -> Iterator[dict[str, str]]:
    """Add fields (e.g. `node="gpu-1"`) to every log line written inside the block."""
    merged = {**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


def bind(**fields: str | None) -> None:
    """Add fields to the innermost open `log_context` (e.g. the user, once authenticated)."""
    context = _context.get()
    if context is not None:
        context.update({k: str(v) for k, v in fields.items() if v is not None})


def bind_caller(username: str, tenant_ids: Iterable[int]) -> None:
    """Add the authenticated caller (user, and tenant ids, comma-separated) to the request's log context."""
    bind(user=username, tenant=",".join(str(tenant) for tenant in sorted(tenant_ids)) or None)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, message, context, trace;
    secrets redacted in the message, traceback and stack."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update(current_context())
        entry.update(_trace_ids())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _trace_ids() -> dict[str, str]:
    """The open span's trace and span ids, when tracing is on (kiln.telemetry)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return {}
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {"trace_id": f"{span_context.trace_id:032x}", "span_id": f"{span_context.span_id:016x}"}


class StderrHandler(logging.StreamHandler):
    """A handler writing to whatever `sys.stderr` is when a record comes (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        """The current sys.stderr."""
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


def configure_logging(level: str | int, log_format: str = "text", stream: Any = None, *,
                      replace: bool = True) -> logging.Handler:
    """Send every log record (Kiln's, uvicorn's, libraries') to one handler on stderr (or
    `stream`) in `log_format`, secrets redacted; returns it. It replaces the one an earlier
    call installed, unless `replace` is False (then that one stays, as `kiln demo` set it)."""
    root = logging.getLogger()
    installed = [handler for handler in root.handlers if getattr(handler, "kiln", False)]
    if installed and not replace:
        return installed[0]
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT))
    handler.kiln = True  # type: ignore[attr-defined]
    for old in installed:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return handler
