"""Downloads from the console: a bill as CSV or FOCUS CSV, a period's FOCUS (CSV, Parquet) and
chargeback exports, and the firmware compliance table as CSV.

Plain GET routes on the console's Flask server, so the gate (`dashboards.gate`) has already
checked the session and put the caller's Principal in `flask.g`. Every file is made for that
Principal by metering's own exporters: a bill that is not one of the caller's tenants' is a
404, and a period export holds only the caller's tenants' lines (all for finance and infra
admins), exactly as `GET /api/v1/exports/...` does; firmware compliance holds the nodes the caller
may see, as `GET /api/v1/firmware/compliance?format=csv` does.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Sequence
from urllib.parse import urlencode

import flask
from sqlmodel import Session

from dashboards.context import console_context, current_principal
from dashboards.cost_data import bill_csv, bill_detail
from fleet.firmware_compliance import STATUSES, compliance, compliance_csv
from kiln.errors import KilnError
from metering import exports
from metering.focus import write_focus

PREFIX = "/downloads"
SPOOL_BYTES = 8 * 1024 * 1024
PERIOD = re.compile(r"^\d{4}-\d{2}$")
MEDIA = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def bill_csv_url(bill_id: int) -> str:
    """Where a bill's CSV is downloaded."""
    return f"{PREFIX}/bills/{bill_id}.csv"


def bill_focus_url(bill_id: int) -> str:
    """Where a bill's FOCUS CSV is downloaded."""
    return f"{PREFIX}/bills/{bill_id}.focus.csv"


def export_url(kind: str, period: str, fmt: str = "csv") -> str:
    """Where a period's export (`focus` or `chargeback`) is downloaded."""
    return f"{PREFIX}/{kind}/{period}.{fmt}"


def firmware_compliance_url(statuses: Sequence[str] = ()) -> str:
    """Where the firmware compliance CSV is downloaded (only `statuses` when given)."""
    query = urlencode([("status", status) for status in statuses])
    return f"{PREFIX}/firmware-compliance.csv" + (f"?{query}" if query else "")


def _problem(exc: KilnError) -> flask.Response:
    response = flask.jsonify({"title": exc.title, "status": exc.status, "detail": exc.detail})
    response.status_code = exc.status
    response.mimetype = "application/problem+json"
    return response


def _attachment(body, filename: str, fmt: str) -> flask.Response:
    return flask.send_file(body, mimetype=MEDIA[fmt], as_attachment=True, download_name=filename, max_age=0)


def _with_session(work: Callable[[Session], flask.Response]) -> flask.Response:
    try:
        with Session(console_context().engine) as session:
            return work(session)
    except KilnError as exc:
        return _problem(exc)


def download_bill(bill_id: int) -> flask.Response:
    """GET /downloads/bills/<id>.csv: the bill's lines and total, if it is one of the caller's tenants'."""
    principal = current_principal()

    def work(session: Session) -> flask.Response:
        detail = bill_detail(session, principal, bill_id)
        return flask.Response(bill_csv(detail), mimetype=MEDIA["csv"], headers={
            "Content-Disposition": f'attachment; filename="kiln-bill-{detail.period}-{detail.tenant}-{detail.id}.csv"'})

    return _with_session(work)


def download_bill_focus(bill_id: int) -> flask.Response:
    """GET /downloads/bills/<id>.focus.csv: the bill's lines as FOCUS 1.2 rows."""
    principal = current_principal()
    account = console_context().settings.billing_account_name

    def work(session: Session) -> flask.Response:
        detail = bill_detail(session, principal, bill_id)
        zone = console_context().settings.carbon_zone
        rows = (r for r in exports.focus_rows(session, principal, detail.period, account, zone)
                if r.extra["x_BillId"] == str(bill_id))
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        write_focus(rows, "csv", spool, extra_columns=exports.EXTRA_COLUMNS)
        spool.seek(0)
        return _attachment(spool, f"kiln-focus-{detail.period}-{detail.tenant}-{detail.id}.csv", "csv")

    return _with_session(work)


def download_export(kind: str, period: str, fmt: str) -> flask.Response:
    """GET /downloads/focus/<period>.<csv|parquet> and /downloads/chargeback/<period>.csv for the caller's tenants."""
    principal = current_principal()
    account = console_context().settings.billing_account_name
    if not PERIOD.match(period) or (kind, fmt) not in {("focus", "csv"), ("focus", "parquet"), ("chargeback", "csv")}:
        flask.abort(404)

    def work(session: Session) -> flask.Response:
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        if kind == "focus":
            exports.export_focus(session, principal, period, fmt, spool, account, console_context().settings.carbon_zone)
        else:
            exports.export_chargeback(session, principal, period, spool, account)
        spool.seek(0)
        return _attachment(spool, f"kiln-{kind}-{period}.{fmt}", fmt)

    return _with_session(work)


def download_firmware_compliance() -> flask.Response:
    """GET /downloads/firmware-compliance.csv[?status=behind]: the compliance rows of the nodes the caller may see."""
    principal = current_principal()
    statuses = flask.request.args.getlist("status")
    if set(statuses) - set(STATUSES):
        flask.abort(404)

    def work(session: Session) -> flask.Response:
        return flask.Response(compliance_csv(compliance(session, principal, statuses=statuses)), mimetype=MEDIA["csv"],
                              headers={"Content-Disposition": 'attachment; filename="kiln-firmware-compliance.csv"'})

    return _with_session(work)


def install(server: flask.Flask) -> None:
    """Add the download routes to the console's Flask server (behind the gate)."""
    server.add_url_rule(f"{PREFIX}/bills/<int:bill_id>.csv", "download_bill", download_bill, methods=["GET"])
    server.add_url_rule(f"{PREFIX}/bills/<int:bill_id>.focus.csv", "download_bill_focus", download_bill_focus, methods=["GET"])
    server.add_url_rule(f"{PREFIX}/<any(focus, chargeback):kind>/<period>.<any(csv, parquet):fmt>", "download_export",
                        download_export, methods=["GET"])
    server.add_url_rule(f"{PREFIX}/firmware-compliance.csv", "download_firmware_compliance", download_firmware_compliance,
                        methods=["GET"])
