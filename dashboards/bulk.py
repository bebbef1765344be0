"""The node table (AG Grid) and its bulk actions, with live per-node progress.

The table fills the window and pages (page size chosen under it), one search box filters every
column at once, states are coloured chips that keep their words, rows group by rack, VDC or
lease holder (row spanning, AG Grid Community has no row grouping), and the action bar stays on
screen (sticky) while the operator scrolls. Its rows come from the server one page at a time
(AG Grid's infinite row model: `dashboards.node_grid` pages, sorts, filters and searches), so a
fleet of 10,000 nodes is not sent with the page; the search box and a finished bulk action
make the grid ask again (dashboards/assets/node_table.js).

Starting an action is what `POST /api/v1/nodes/actions` does: `fleet.operations.plan_action`
records one operation per selected node (the ticked rows, or every node the table's search and
filters match: `dashboards.bulk_all`, confirmed first when they are many) in the caller's transaction (infra admins only;
bad parameters are explained next to their field), then each operation is handed to the
process's `FleetRuntime` pool to run through its driver. A polling interval then reads
the operations back (only on nodes the caller may see, as `GET /api/v1/operations`
does) until every node has finished, and refreshes the table.
"""

from __future__ import annotations

import time
from typing import Any

import dash
import dash_ag_grid as dag
from dash import ClientsideFunction, Input, Output, State, dcc, html, no_update
from sqlmodel import col, select

from dashboards import bulk_all
from dashboards.components import GRID_COLUMN_DEFAULTS
from dashboards.context import console_context, current_principal, db_session
from dashboards.node_grid import forget, rows_block
from fleet.models import Node, Operation
from fleet.nodes import visible
from fleet.operations import ActionParams, OpStatus, plan_action
from fleet.operations import to_public as operations_public
from fleet.provisioning.actions import Action
from fleet.provisioning.states import FAILED_STATES, TRANSIENT_STATES, PowerState, ProvisionState
from fleet.runtime import runtime_of
from kiln.errors import KilnError, ValidationFailed

BULK_ACTIONS = {
    Action.POWER_ON: "Power on",
    Action.POWER_OFF: "Power off",
    Action.MAINTENANCE_ON: "Maintenance on",
    Action.MAINTENANCE_OFF: "Maintenance off",
    Action.PROVIDE: "Provide (clean → available)",
    Action.DEPLOY: "Deploy an image",
}
FIELD_IDS = {"image_url": "bulk-image-url", "image_checksum": "bulk-image-checksum", "reason": "bulk-reason"}
FINISHED = {OpStatus.SUCCEEDED.value, OpStatus.FAILED.value}
POLL_MS = 600

CHIP = {"cellRenderer": "StatusChip"}  # dashboards/assets/node_table.js: the value in a chip of its row's tone
COLUMNS = [
    {"field": "link", "headerName": "Node", "cellRenderer": "markdown", "minWidth": 150, "pinned": "left"},
    {"field": "provision_state", "headerName": "Provision state", "minWidth": 170, **CHIP},
    {"field": "power_state", "headerName": "Power", "minWidth": 130, **CHIP},
    {"field": "maintenance", "headerName": "Maintenance", "minWidth": 135, **CHIP},
    {"field": "health", "headerName": "Health", "minWidth": 130, **CHIP},
    {"field": "power_watts", "headerName": "Power draw (W)", "filter": "agNumberColumnFilter", "type": "numericColumn"},
    {"field": "max_temp_c", "headerName": "Hottest sensor (°C)", "filter": "agNumberColumnFilter", "type": "numericColumn"},
    {"field": "gpus", "headerName": "GPUs", "filter": "agNumberColumnFilter", "type": "numericColumn"},
    {"field": "gpu_model", "headerName": "GPU model", "minWidth": 200},
    {"field": "rack", "headerName": "Rack"},
    {"field": "vdc", "headerName": "VDC"},
    {"field": "tenant", "headerName": "Leased to", "minWidth": 120},
    {"field": "last_error", "headerName": "Last error", "tooltipField": "last_error"},
]
PAGE_SIZES = [25, 50, 100, 200]
# group-by choices, column → label; the label alone names the dropdown to screen readers (Dash labels it by its value)
GROUPS = {"": "No grouping", "rack": "Group by rack", "vdc": "Group by VDC", "tenant": "Group by lease holder"}
OK, WARN, BAD, NEUTRAL = "ok", "warn", "bad", "neutral"


def chip_tones(row: dict[str, Any]) -> dict[str, str]:
    """The tone of each status chip of a node row: ok, warn, bad or neutral."""
    state = row["provision_state"]
    return {
        "provision_state": BAD if state in FAILED_STATES else WARN if state in TRANSIENT_STATES
        else OK if state in (ProvisionState.ACTIVE, ProvisionState.AVAILABLE) else NEUTRAL,
        "power_state": {PowerState.ON: OK, PowerState.ERROR: BAD}.get(row["power_state"], NEUTRAL),
        "maintenance": WARN if row["maintenance"] == "yes" else NEUTRAL,
        "health": {"ok": OK, "warning": WARN, "critical": BAD}.get(row["health"], NEUTRAL),
    }


def grid_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Node rows with a markdown link to each node's page and their chips' tones."""
    return [{**row, "link": f"[{row['name']}](/nodes/{row['name']})", "tones": chip_tones(row)} for row in rows]


def node_grid() -> html.Div:
    """The search box and the sortable, filterable, paged node table with multi-row selection (its
    rows come from `node_rows_block`)."""
    grid = dag.AgGrid(
        id="node-grid",
        rowModelType="infinite",
        columnDefs=COLUMNS,
        defaultColDef={**GRID_COLUMN_DEFAULTS, "floatingFilter": True, "minWidth": 100, "wrapHeaderText": True,
                       "autoHeaderHeight": True},
        getRowId="params.data.name",
        dashGridOptions={  # no select-all box: the infinite row model holds only the pages seen (bulk_all instead)
            "rowSelection": {"mode": "multiRow", "checkboxes": True, "headerCheckbox": False, "enableClickSelection": False},
            "pagination": True, "paginationPageSize": 50, "paginationPageSizeSelector": PAGE_SIZES, "animateRows": False,
            "cacheBlockSize": 50, "maxBlocksInCache": 20, "infiniteInitialRowCount": 1,
            "suppressRowTransform": True,  # rows placed by `top`: a grouped column's cell spans rows (grouped_columns)
        },
        style={"height": "max(460px, calc(100vh - 240px))"},
        className="ag-theme-quartz",
    )
    search = html.Div([
        html.Label("Search nodes", htmlFor="node-search"),
        dcc.Input(id="node-search", type="search", placeholder="name, state, rack, VDC, tenant, GPU model…",
                  debounce=0.3, autoComplete="off"),
    ], className="field node-search")
    group_by = html.Div([  # Dash's RadioItems is a listbox of labels wrapping radios (axe: nested-interactive)
        html.Label("Group by", htmlFor="node-group-by"),
        dcc.Dropdown(id="node-group-by", options=[{"label": label, "value": value} for value, label in GROUPS.items()],
                     value="", clearable=False, searchable=False),
    ], className="field node-group-by")
    return html.Div([html.Div([search, group_by], className="node-tools"), html.Div(grid, className="grid-wrap"),
                     dcc.Store(id="node-grid-changed"), dcc.Store(id="node-grid-asked")])


def node_rows_block(request: dict | None, search: str | None) -> tuple:
    """One block of the table's rows for AG Grid's infinite row model (`getRowsRequest` → `getRowsResponse`),
    and the query that chose them with its count (`bulk_all.query_of`: what "apply to all" acts on)."""
    if not request:
        return no_update, no_update, no_update
    with db_session() as session:
        block = rows_block(session, current_principal(), request, search)
    return ({"rowData": grid_rows(block["rowData"]), "rowCount": block["rowCount"]},
            *bulk_all.query_of(request, search, block["rowCount"]))


def grouped_columns(group: str | None) -> list[dict[str, Any]]:
    """The table's columns grouped by `group` (rack, vdc or tenant): that column pinned beside the name and
    sorted, a run of equal values on a page drawn as one cell (AG Grid's rowSpan, dashboards/assets/node_table.js:
    the infinite row model has no spanRows); ungrouped for any other choice. The other group columns are unpinned
    and unsorted explicitly: AG Grid keeps a column's pin and sort otherwise."""
    columns = []
    for column in COLUMNS:
        if column["field"] == group:
            columns.append({**column, "pinned": "left", "sort": "asc", "sortIndex": 0, "cellClass": "run-cell",
                            "rowSpan": {"function": "kilnRunLength(params)"},
                            "valueFormatter": {"function": "kilnRunHead(params)"}})
        elif column["field"] in GROUPS:
            columns.append({**column, "pinned": None, "sort": None, "sortIndex": None, "rowSpan": None,
                            "valueFormatter": None, "cellClass": None})
        else:
            columns.append(column)
    return columns


def action_panel() -> html.Div:
    """Action chooser, its parameters with room for per-field errors, and the progress area."""
    def field(label: str, name: str, placeholder: str) -> html.Div:
        return html.Div([
            html.Label(label, htmlFor=FIELD_IDS[name]),
            dcc.Input(id=FIELD_IDS[name], type="text", placeholder=placeholder, debounce=True),
            html.Div(id=f"{FIELD_IDS[name]}-error", className="field-error"),
        ], className="field")

    return html.Div([
        html.Div([
            html.Label("Action", htmlFor="bulk-action"),
            dcc.Dropdown(id="bulk-action", options=[{"label": v, "value": k.value} for k, v in BULK_ACTIONS.items()],
                         placeholder="Choose an action", clearable=False),
        ], className="field"),
        field("Image URL (deploy)", "image_url", "http://images/ubuntu-22.04.qcow2"),
        field("Image checksum (deploy)", "image_checksum", "sha256:…"),
        field("Reason (maintenance)", "reason", "fan replacement"),
        html.Div([bulk_all.control(), html.Button("Run on selected nodes", id="bulk-run", n_clicks=0, className="button")],
                 className="bulk-run"),
        html.Div(id="bulk-message", className="message", role="status"),
        dcc.Store(id="bulk-operations"),
        dcc.Interval(id="bulk-poll", interval=POLL_MS, disabled=True),
        html.Div(id="bulk-progress"),
    ], className="bulk-panel")


def start_bulk(n_clicks: int, confirmed: int | None, selected: list[dict] | None, every: bool | None,
               query: dict | None, search: str | None, pending: dict | None, action: str | None, image_url: str | None,
               checksum: str | None, reason: str | None) -> tuple:
    """Plan the action on the ticked rows, or on every node the table matches (`bulk_all`, confirmed first
    when they are many), and start it; explain bad input next to its field."""
    no_errors, no_dialog = ("", "", ""), (no_update, no_update, no_update)
    if not n_clicks:
        return no_update, no_update, no_update, *no_errors, *no_dialog

    def told(message: str) -> tuple:
        return no_update, no_update, message, *no_errors, *no_dialog

    if not selected and not every:
        return told("Select at least one node in the table, or apply to all matching nodes.")
    if not action:
        return told("Choose an action.")
    if every and bulk_all.stale(query, search):
        return told("The table is still finding the nodes for this search: run again in a moment.")
    principal = current_principal()
    params = ActionParams(image_url=image_url or None, image_checksum=checksum or None, reason=reason or None)
    try:
        with db_session() as session:
            plan_action(session, principal, [], Action(action), params)  # the caller's role and the parameters, no rows
            nodes = bulk_all.target_nodes(session, principal, selected, every, query)
            if not nodes:
                return told("No node matches the table's search and filters." if every
                            else "The selected nodes are gone: search the table again.")
            question = bulk_all.confirmation(every, len(nodes), action, BULK_ACTIONS[Action(action)],
                                             dash.ctx.triggered_id == "bulk-confirm" and bool(confirmed), pending)
            if question:
                return (no_update, no_update, f"Confirm to start on {len(nodes):,} nodes.", *no_errors,
                        True, question, {"action": action, "count": len(nodes)})
            operations = plan_action(session, principal, nodes, Action(action), params)
            ids = [o.id for o in operations]
    except ValidationFailed as exc:
        problem = exc.extensions["errors"][0]
        hint = "Required to deploy: enter the image's URL and its checksum." if problem["field"].startswith("image") else problem["message"]
        errors = {f: hint if f == problem["field"] else "" for f in FIELD_IDS}
        return (no_update, no_update, "Fix the field marked below.", errors["image_url"], errors["image_checksum"],
                errors["reason"], *no_dialog)
    except KilnError as exc:
        return told(exc.detail)
    runtime = runtime_of(console_context().state)
    for operation_id in ids:
        runtime.pool.submit(runtime.runner.run, operation_id)
    message = f"{BULK_ACTIONS[Action(action)]}: started on {len(ids)} node(s)."
    return {"ids": ids}, False, message, *no_errors, False, no_update, None


def _progress(operations: list) -> html.Div:
    done = [o for o in operations if o.status in FINISHED]
    failed = [o for o in done if o.status == OpStatus.FAILED.value]
    summary = f"{len(done)} of {len(operations)} finished: {len(done) - len(failed)} succeeded, {len(failed)} failed"
    rows = [
        html.Tr([html.Td(o.node), html.Td(o.action), html.Td(o.status, className=f"status-{o.status}"),
                 html.Td(o.result_state or "—"), html.Td(o.error or "")], id=f"op-{o.node}")
        for o in sorted(operations, key=lambda o: o.node)
    ]
    return html.Div([
        html.Progress(value=str(len(done)), max=str(len(operations)), id="bulk-progress-bar"),
        html.P(summary, id="bulk-summary"),
        html.Table([html.Thead(html.Tr([html.Th(h) for h in ("Node", "Action", "Status", "State", "Error")])),
                    html.Tbody(rows)], className="table", id="bulk-results"),
    ])


def poll_bulk(_: int, store: dict | None) -> tuple:
    """Show each node's operation; stop polling and refresh the table when all have finished."""
    if not store or not store.get("ids"):
        return no_update, True, no_update
    principal = current_principal()
    with db_session() as session:
        statement = select(Operation).where(col(Operation.id).in_(store["ids"]))
        statement = statement.where(col(Operation.node_id).in_(visible(select(Node.id), principal)))
        operations = operations_public(session, session.exec(statement).all())
        finished = all(o.status in FINISHED for o in operations)
    if finished:
        forget()  # the nodes' states changed: the table asks for its rows again
    return _progress(operations), finished, time.time() if finished else no_update


def register(app: dash.Dash) -> None:
    """Register the node table's search and the bulk-action callbacks on the console app."""
    app.callback(Output("node-grid", "getRowsResponse"), Output("node-grid-query", "data"), Output("bulk-all", "children"),
                 Input("node-grid", "getRowsRequest"), State("node-search", "value"), prevent_initial_call=True)(node_rows_block)
    app.clientside_callback(ClientsideFunction("kilnNodeTable", "search"), Output("node-grid-asked", "data"),
                            Input("node-search", "value"), prevent_initial_call=True)
    app.clientside_callback(ClientsideFunction("kilnNodeTable", "refresh"), Output("node-grid-asked", "data", allow_duplicate=True),
                            Input("node-grid-changed", "data"), prevent_initial_call=True)
    app.clientside_callback(ClientsideFunction("kilnNodeTable", "flip"), Output("bulk-all-on", "data"),
                            Output("bulk-all", "aria-checked"), Input("bulk-all", "n_clicks"), prevent_initial_call=True)
    app.clientside_callback(ClientsideFunction("kilnNodeTable", "runLabel"), Output("bulk-run", "children"),
                            Input("bulk-all-on", "data"), Input("bulk-all", "children"), prevent_initial_call=True)
    app.callback(Output("node-grid", "columnDefs"), Input("node-group-by", "value"),
                 prevent_initial_call=True)(grouped_columns)
    app.callback(
        Output("bulk-operations", "data"), Output("bulk-poll", "disabled", allow_duplicate=True),
        Output("bulk-message", "children"), Output("bulk-image-url-error", "children"),
        Output("bulk-image-checksum-error", "children"), Output("bulk-reason-error", "children"),
        Output("bulk-confirm", "displayed"), Output("bulk-confirm", "message"), Output("bulk-pending", "data"),
        Input("bulk-run", "n_clicks"), Input("bulk-confirm", "submit_n_clicks"), State("node-grid", "selectedRows"),
        State("bulk-all-on", "data"), State("node-grid-query", "data"), State("node-search", "value"),
        State("bulk-pending", "data"), State("bulk-action", "value"),
        State("bulk-image-url", "value"), State("bulk-image-checksum", "value"), State("bulk-reason", "value"),
        prevent_initial_call=True,
    )(start_bulk)
    app.callback(Output("bulk-message", "children", allow_duplicate=True), Input("bulk-confirm", "cancel_n_clicks"),
                 prevent_initial_call=True)(bulk_all.cancelled)
    app.callback(
        Output("bulk-progress", "children"), Output("bulk-poll", "disabled"), Output("node-grid-changed", "data"),
        Input("bulk-poll", "n_intervals"), State("bulk-operations", "data"),
        prevent_initial_call=True,
    )(poll_bulk)
