"""The page for console paths that match no page."""

from __future__ import annotations

import dash
from dash import html


def layout(**_: str) -> html.Div:
    """A plain 'no such page' panel with a way back."""
    return html.Div([html.H1("Page not found", id="not-found"), html.P("There is no console page at this address."),
                     html.A("Back to your overview", href="/")])


def register(app: dash.Dash) -> None:
    """Register the not-found page (Dash Pages finds it by its module name)."""
    dash.register_page(__name__, path="/404", name="Not found", title="Not found — Kiln", layout=layout)
