"""A tenant's budgets on the members page: the list, and an editor to create, change and delete one.

The editor builds `BudgetCreate` / `BudgetUpdate` and calls `metering.budgets.create_budget`,
`update_budget` and `delete_budget` with the signed-in caller — the functions and validation behind
`/api/v1/budgets` — so a tenant admin can only reach budgets of their own tenants (another
tenant's is "not found", as in the API). Once created, a budget's tenant, VDC, unit and currency
are fixed (the API changes only name, amount and thresholds), so those fields are then locked.
"""

from __future__ import annotations


import dash
from dash import Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate
from sqlmodel import Session

from dashboards.components import table
from dashboards.context import current_principal, db_session
from dashboards.forms import (
    NEW, attempt, blank_to_none, done, field, message, refused, save_and_delete, split_list, text_input,
)
from fleet.vdcs import list_vdcs, to_public
from kiln.auth import Principal
from kiln.tenants import visible_tenant
from kiln.validation import parse_model
from metering import budgets as budget_service
from metering.bills import billing_currency
from metering.budgets import BudgetCreate, BudgetPublic, BudgetUpdate

FIELDS = ("budget-name", "budget-vdc", "budget-amount", "budget-unit", "budget-currency", "budget-thresholds")
UNITS = [{"label": "money (per month)", "value": "money"}, {"label": "kg CO2e (per month)", "value": "kg-co2e"}]
WHOLE_TENANT = "__tenant__"  # the VDC picker's "the whole tenant" (not a valid VDC name)
FIXED = ("budget-vdc", "budget-unit", "budget-currency")  # set when a budget is created, never changed
LOCKED_NEW, LOCKED_EXISTING = (False, False, False, True), (True, True, True, False)  # FIXED disabled, delete disabled


def tenant_budgets(session: Session, principal: Principal, slug: str) -> list[BudgetPublic]:
    """The budgets of tenant `slug`, if the caller may see it (NotFound otherwise, as the API says)."""
    tenant = visible_tenant(session, principal, slug)
    return budget_service.to_public(
        session, [b for b in budget_service.list_budgets(session, principal) if b.tenant_id == tenant.id])


def budget_table(budgets: list[BudgetPublic]) -> html.Div:
    """The tenant's budgets as a table (or why there are none)."""
    return table(("name", "VDC", "amount per month", "thresholds"),
                 [(b.name, b.vdc or "whole tenant", f"{b.amount} {b.currency or 'kg CO2e'}",
                   ", ".join(f"{t} %" for t in b.thresholds)) for b in budgets],
                 empty="No budgets yet: create one below; alerts go out as spend crosses each threshold.",
                 element_id="budgets-list")


def pick_options(budgets: list[BudgetPublic]) -> list[dict[str, str]]:
    """The budget picker's choices: a new budget, then the tenant's budgets."""
    return [{"label": "New budget", "value": NEW}, *({"label": b.name, "value": str(b.id)} for b in budgets)]


def vdc_options(session: Session, principal: Principal, slug: str) -> list[dict[str, str]]:
    """The whole tenant, then each VDC granted to the tenant (a budget may cover one)."""
    granted = [v.name for v in to_public(session, principal, list_vdcs(session, principal))
               if any(g.tenant == slug for g in v.tenants)]
    return [{"label": "whole tenant", "value": WHOLE_TENANT}, *({"label": name, "value": name} for name in granted)]


def section(session: Session, principal: Principal, slug: str) -> html.Section:
    """The budgets block: list, picker and editor for tenant `slug`."""
    budgets = tenant_budgets(session, principal, slug)
    return html.Section([
        html.H2("Budgets"),
        html.Div(budget_table(budgets), id="budgets-table"),
        html.H3("Create or change a budget"),
        html.Div([
            field("Budget", dcc.Dropdown(id="budget-pick", options=pick_options(budgets), value=NEW, clearable=False),
                  "budget-pick"),
            field("Name", text_input("budget-name", "e.g. monthly GPU spend"), "budget-name"),
            field("Covers", dcc.Dropdown(id="budget-vdc", options=vdc_options(session, principal, slug),
                                         value=WHOLE_TENANT, clearable=False), "budget-vdc"),
        ], className="form-row"),
        html.Div([
            field("Amount per month", text_input("budget-amount", "e.g. 25000", inputMode="decimal"), "budget-amount"),
            field("Unit", dcc.Dropdown(id="budget-unit", options=UNITS, value="money", clearable=False), "budget-unit"),
            field("Currency", text_input("budget-currency", "e.g. EUR", value=billing_currency(session, [])),
                  "budget-currency", "money budgets only"),
            field("Alert at (% of the amount)", text_input("budget-thresholds", "50, 80, 100", value="50, 80, 100"),
                  "budget-thresholds", "comma-separated"),
        ], className="form-row"),
        save_and_delete("budget", "budget", "Delete this budget and its alerts?"),
        message("budget-message"),
    ], className="card", id="budgets")


def load(pick: str | None) -> tuple:
    """Fill the editor with the picked budget (defaults for a new one); its fixed fields (VDC, unit,
    currency) locked once created, the delete button usable only then."""
    if not pick or pick == NEW:
        with db_session() as session:
            currency = billing_currency(session, [])
        return "", WHOLE_TENANT, "", "money", currency, "50, 80, 100", *LOCKED_NEW
    principal = current_principal()
    budget, error = attempt(lambda session: budget_service.to_public(
        session, [budget_service.get_budget(session, principal, int(pick))])[0])
    if error:  # another tenant's budget (a crafted request): "not found", nothing to show
        raise PreventUpdate
    return (budget.name, budget.vdc or WHOLE_TENANT, str(budget.amount), budget.unit, budget.currency or "",
            ", ".join(map(str, budget.thresholds)), *LOCKED_EXISTING)


def save(n_clicks: int, slug: str | None, pick: str | None, name: str | None, vdc: str | None, amount: str | None,
         unit: str | None, currency: str | None, thresholds: str | None) -> tuple:
    """Create a budget for the tenant (picker on "New budget") or change the picked one."""
    if not n_clicks or not slug:
        raise PreventUpdate
    principal = current_principal()
    levels = split_list(thresholds)

    def change(session: Session) -> str:
        if not pick or pick == NEW:
            data = parse_model(BudgetCreate, {
                "tenant": slug, "vdc": None if vdc == WHOLE_TENANT else vdc, "name": blank_to_none(name),
                "amount": blank_to_none(amount), "unit": unit,
                "currency": blank_to_none(currency) if unit == "money" else None, "thresholds": levels})
            budget = budget_service.create_budget(session, principal, data)
        else:
            data = parse_model(BudgetUpdate, {"name": blank_to_none(name), "amount": blank_to_none(amount),
                                              "thresholds": levels})
            budget = budget_service.update_budget(session, principal, int(pick), data)
        return str(budget.id)

    saved, error = attempt(change)
    if error:
        return refused(error), no_update, no_update, no_update
    verb = "created" if not pick or pick == NEW else "saved"
    return done(f"Budget {(name or '').strip()} {verb}."), *refreshed(slug, saved)


def delete(submitted: int | None, slug: str | None, pick: str | None) -> tuple:
    """Delete the picked budget once confirmed."""
    if not submitted or not slug or not pick or pick == NEW:
        raise PreventUpdate
    principal = current_principal()
    _, error = attempt(lambda session: budget_service.delete_budget(session, principal, int(pick)))
    if error:
        return refused(error), no_update, no_update, no_update
    return done("Budget deleted."), *refreshed(slug, NEW)


def refreshed(slug: str, picked: str) -> tuple:
    """The budget list, the picker's choices and its value, after a change."""
    principal = current_principal()
    with db_session() as session:
        budgets = tenant_budgets(session, principal, slug)
    return budget_table(budgets), pick_options(budgets), picked


def register(app: dash.Dash) -> None:
    """Register the budget editor's callbacks."""
    app.callback(*[Output(i, "value") for i in FIELDS], *[Output(i, "disabled") for i in FIXED],
                 Output("budget-delete", "disabled"), Input("budget-pick", "value"), prevent_initial_call=True)(load)
    changed = (Output("budget-message", "children"), Output("budgets-table", "children"),
               Output("budget-pick", "options"), Output("budget-pick", "value"))
    app.callback(*changed, Input("budget-save", "n_clicks"), State("members-tenant", "value"), State("budget-pick", "value"),
                 *[State(i, "value") for i in FIELDS], prevent_initial_call=True)(save)
    app.callback(*[Output(o.component_id, o.component_property, allow_duplicate=True) for o in changed],
                 Input("budget-delete-confirm", "submit_n_clicks"), State("members-tenant", "value"),
                 State("budget-pick", "value"), prevent_initial_call=True)(delete)

