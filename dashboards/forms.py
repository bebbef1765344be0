"""Pieces of the console's editing forms (VDCs, members, budgets): labelled fields, the problem
message shown next to a form, and running a service call in one transaction.

A form's callback builds the same request model the API takes (`kiln.validation.parse_model`)
and calls the same service function with the signed-in caller; a `KilnError` (bad input,
forbidden, not found, conflict) rolls the transaction back — nothing is stored — and its
RFC 9457 title and detail are shown beside the form, as the API would answer them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from dash import dcc, html
from sqlmodel import Session

from dashboards.context import db_session
from kiln.errors import KilnError

Result = TypeVar("Result")
NEW = "__new__"  # the picker's value for "a new one" (not a valid slug, so never an existing name)


def field(label: str, control: Any, element_id: str, hint: str = "") -> html.Div:
    """A labelled form control (the label names the control for screen readers), with an optional hint."""
    return html.Div([html.Label(label, htmlFor=element_id), control,
                     html.Div(hint, className="field-hint") if hint else None], className="field")


def text_input(element_id: str, placeholder: str = "", **props: Any) -> dcc.Input:
    """A one-line text box."""
    return dcc.Input(id=element_id, type="text", placeholder=placeholder, debounce=False, **props)


def count_input(element_id: Any, placeholder: str = "no limit", **props: Any) -> dcc.Input:
    """A whole-number box (empty: no limit). No `min`: Dash would drop an out-of-range number to
    None (no limit) silently; the service refuses it instead, with its reason."""
    return dcc.Input(id=element_id, type="number", step=1, placeholder=placeholder, **props)


def problem_text(error: KilnError) -> str:
    """What a form shows for a refused change: the problem's title and detail, as the API returns them."""
    return f"{error.title}: {error.detail}"


def save_and_delete(prefix: str, noun: str, confirm: str) -> html.Div:
    """An editor's "Save <noun>" button and its "Delete <noun>" button behind a confirmation
    (ids `{prefix}-save`, `{prefix}-delete`, `{prefix}-delete-confirm`; delete disabled until loaded)."""
    return html.Div([
        html.Button(f"Save {noun}", id=f"{prefix}-save", n_clicks=0, className="button"),
        dcc.ConfirmDialogProvider(html.Button(f"Delete {noun}", id=f"{prefix}-delete", className="button secondary",
                                              disabled=True),
                                  id=f"{prefix}-delete-confirm", message=confirm),
    ], className="form-actions")


def message(element_id: str) -> html.Div:
    """Where a form says what happened: success (a status) or the problem (an alert)."""
    return html.Div(id=element_id, className="form-message", role="status", **{"aria-live": "polite"})


def done(text: str) -> html.P:
    """A success line for `message`."""
    return html.P(text, className="notice info")


def refused(error: KilnError) -> html.P:
    """A problem line for `message`."""
    return html.P(problem_text(error), className="notice error", role="alert")


def attempt(change: Callable[[Session], Result]) -> tuple[Result | None, KilnError | None]:
    """Run `change` in one database transaction: (its result, None) when committed, (None, the
    error) when a service refused it and the transaction was rolled back."""
    try:
        with db_session() as session:
            return change(session), None
    except KilnError as error:
        return None, error


def blank_to_none(value: Any) -> Any:
    """None for an empty form value ('' or whitespace), the value otherwise (strings stripped)."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def split_list(value: str | None) -> list[str]:
    """The non-empty items of a comma- or line-separated list."""
    return [item.strip() for item in (value or "").replace("\n", ",").split(",") if item.strip()]
