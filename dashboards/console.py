"""Build the console for one Kiln app: a Dash (Pages) app on its own Flask server, behind the gate.

One console per FastAPI app, built from that app's state (settings, engine, fleet
runtime): callbacks are registered on the app object (`app.callback`), never globally, so
several Kiln apps in one process (tests) do not share anything but Dash's page registry,
whose entries are the same for all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dash
import flask
from dash import _callback_context

from dashboards import downloads, gate, shell, signin
from dashboards.context import ConsoleContext
from dashboards.pages import account, bill, costs, finance, firmware, fleet, members, node, not_found_404, usage, vdcs
from dashboards.session import SessionCodec
from kiln.settings import resolve_secret_key

ASSETS = Path(__file__).parent / "assets"
PAGES = (fleet, vdcs, firmware, usage, costs, finance, members, account, node, bill, not_found_404)
ADMIN_PATHS = (fleet.PATH, vdcs.PATH, firmware.PATH)
ASSET_MAX_AGE_S = 365 * 24 * 3600
# Dash's page frame with the page's language (screen readers pick their voice by it) and the colour
# schemes the stylesheet supports (the browser's own controls and scrollbars follow the user's choice).
INDEX_STRING = """<!DOCTYPE html>
<html lang="en">
    <head>
        <meta name="color-scheme" content="light dark">
        {%metas%}
        <title>{%title%}</title>
        {%favicon%}
        {%css%}
    </head>
    <body>
        {%app_entry%}
        <footer>
            {%config%}
            {%scripts%}
            {%renderer%}
        </footer>
    </body>
</html>"""


def create_console(state: Any) -> flask.Flask:
    """The console's WSGI server for a Kiln app whose `state` has settings and engine."""
    settings = state.settings
    server = flask.Flask("kiln.console")
    # Dash links every asset with `?m=<mtime>`, so a changed file gets a new URL: browsers may keep
    # them (plotly.js, the console's CSS and script) instead of revalidating each on every tab.
    server.config["SEND_FILE_MAX_AGE_DEFAULT"] = ASSET_MAX_AGE_S
    codec = SessionCodec(resolve_secret_key(settings), settings.console_session_hours * 3600)
    context = ConsoleContext(settings=settings, engine=state.engine, state=state, codec=codec, admin_paths=ADMIN_PATHS)
    if settings.oidc_enabled:
        from dashboards.oidc_signin import OIDCSignIn

        context.oidc = OIDCSignIn(settings, getattr(state, "oidc", None))
    server.config["KILN_CONSOLE"] = context
    app = dash.Dash(
        "kiln.console",
        server=server,
        use_pages=True,
        pages_folder="",
        assets_folder=str(ASSETS),
        title="Kiln",
        index_string=INDEX_STRING,
        update_title=None,
        suppress_callback_exceptions=True,
        serve_locally=True,
        compress=False,
    )
    if _callback_context.context_value.get(None) is None:
        # Dash sets this context variable where it is first imported; a console built in another
        # thread's context (the lazy mount builds in a worker thread) needs it for register_page.
        _callback_context.context_value.set({})
    for page in PAGES:
        page.register(app)
    app.layout = shell.layout
    gate.install(server)
    signin.install(server)
    downloads.install(server)
    if context.oidc is not None:
        context.oidc.install(server)
    return server
