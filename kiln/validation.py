"""Validate input that does not arrive through FastAPI (CLI flags, import files) the same way."""

from __future__ import annotations

import ipaddress
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kiln.errors import ValidationFailed

Model = TypeVar("Model", bound=BaseModel)


def clean_message(message: str) -> str:
    """A pydantic error message without pydantic's `Value error, ` prefix."""
    return message.removeprefix("Value error, ")


def parse_model(model: type[Model], values: dict[str, Any], *, keep_none: bool = False) -> Model:
    """`model` built from `values` (None values left out, unless `keep_none`: then a None is set, e.g.
    to clear a limit in an update); ValidationFailed naming the first bad field."""
    try:
        return model.model_validate({k: v for k, v in values.items() if keep_none or v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "input"
        raise ValidationFailed(field, clean_message(error["msg"])) from None


def is_ip_address(host: str) -> bool:
    """Whether `host` is an IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
