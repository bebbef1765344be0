"""Firmware baselines: the version each firmware component should run, per resource class or GPU model.

A baseline row is `(resource_class, component, version)`:

- `resource_class` is a node resource class (`gpu.h100`), or `gpu:<model>` for every node with a
  GPU of that model (`gpu:NVIDIA H100 80GB HBM3`, as `Gpu.model` spells it). Only classes and
  models that nodes have are accepted: anything else is a typo until a node has it.
- `component` is one of the firmware inventory's kinds, `bmc`, `bios`, `gpu`, `nic` (any case;
  it applies to every component of that kind on the node), or a Redfish FirmwareInventory `Id`
  exactly as the BMC lists it (`HGX_FW_GPU_0`) to pin one component. `other` is refused: it
  lumps unrelated parts together, so name their Ids instead.
- `version` is the version the component should report (compared in fleet/firmware_compliance.py).

An import (`kiln firmware baseline import FILE`, CSV header `resource_class,component,version`, or
`PUT /api/v1/firmware/baselines` with the same CSV as its body) is all or nothing: every problem is reported with its row and
column, and nothing is stored unless every row is good. Each resource class named in the import
has its baseline replaced by the import's rows; classes not named keep theirs.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping

from pydantic import BaseModel, Field
from sqlmodel import Session, col, delete, select

from collectors.redfish_firmware import COMPONENTS
from fleet.models import FirmwareBaseline, Gpu, Node
from kiln import audit
from kiln.auth import Principal
from kiln.db import utcnow
from kiln.errors import BadRequest
from kiln.roles import Role

HEADER = ["resource_class", "component", "version"]
GPU_SCOPE = "gpu:"
BASELINE_KINDS = tuple(c for c in COMPONENTS if c != "other")
REDFISH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
MAX_VERSION = 128
MAX_ERRORS_SHOWN = 20


class BaselineError(BadRequest):
    """A baseline file or request that cannot be imported; nothing was stored."""


class BaselineRow(BaseModel):
    """One baseline entry, as imported and as listed."""

    resource_class: str = Field(description="A node resource class, or gpu:<GPU model>.")
    component: str = Field(description="bmc, bios, gpu, nic, or a Redfish FirmwareInventory Id.")
    version: str = Field(description="The version the component should run.")


class BaselinePublic(BaselineRow):
    """A stored baseline entry with who set it and when."""

    updated_at: object
    updated_by: str


def known_scopes(session: Session) -> set[str]:
    """The resource classes nodes have, and `gpu:<model>` for every GPU model in the fleet."""
    classes = {c for c in session.exec(select(Node.resource_class).distinct()).all() if c}
    models = {GPU_SCOPE + m for m in session.exec(select(Gpu.model).distinct()).all() if m}
    return classes | models


def parse_baseline_csv(text: str) -> list[tuple[Callable[[str], str], dict[str, str]]]:
    """The rows of a baseline CSV, each with a namer of its cells (`row 3, column version`)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [cell.strip() for cell in next(reader, [])]
        if header != HEADER:
            raise BaselineError(f"the first line must be the header {','.join(HEADER)} "
                                f"(found {','.join(header)[:200] or 'nothing'})")
        rows = []
        for number, cells in enumerate(reader, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(HEADER):
                rows.append((_csv_place(number), {"": f"expected {len(HEADER)} columns ({','.join(HEADER)}), found {len(cells)}"}))
                continue
            rows.append((_csv_place(number), dict(zip(HEADER, (cell.strip() for cell in cells)))))
    except csv.Error as exc:
        raise BaselineError(f"not a CSV file: line {reader.line_num}: {exc}") from None
    return rows


def _csv_place(number: int) -> Callable[[str], str]:
    return lambda column: f"row {number}, column {column}" if column else f"row {number}"


def validate_rows(rows: list[tuple[Callable[[str], str], Mapping[str, str]]], scopes: set[str]) -> list[BaselineRow]:
    """Checked, normalised rows, or BaselineError listing every problem with its place."""
    errors: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    good: list[BaselineRow] = []
    for place, cells in rows:
        if "" in cells:  # a malformed line: its message is all there is
            errors.append(f"{place('')}: {cells['']}")
            continue
        problems = [f"{place(column)}: {message}" for column, message in _problems(cells, scopes)]
        if problems:
            errors += problems
            continue
        row = BaselineRow(resource_class=cells["resource_class"], component=normal_component(cells["component"]),
                          version=cells["version"])
        key = (row.resource_class, row.component)
        if key in seen:
            errors.append(f"{place('component')}: {row.resource_class} {row.component} is also given at {seen[key]}")
        seen.setdefault(key, place(""))
        good.append(row)
    if errors:
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN]) + ("; …" if len(errors) > MAX_ERRORS_SHOWN else "")
        raise BaselineError(f"{len(errors)} problem(s), nothing imported: {shown}", problems=errors)
    if not good:
        raise BaselineError("no baseline rows: nothing to import")
    return good


def normal_component(text: str) -> str:
    """A kind in lower case (`BMC` → `bmc`); a Redfish Id as written."""
    return text.lower() if text.lower() in COMPONENTS else text


def _problems(cells: Mapping[str, str], scopes: set[str]) -> Iterable[tuple[str, str]]:
    scope, component, version = cells["resource_class"], cells["component"], cells["version"]
    if not scope:
        yield "resource_class", "empty: give a resource class or gpu:<GPU model>"
    elif scope not in scopes:
        what = "GPU model" if scope.startswith(GPU_SCOPE) else "resource class"
        known = ", ".join(sorted(scopes)) or "none: nodes have no resource class or GPU yet"
        yield "resource_class", f"{_shown(scope)} is no node's {what} (known: {known})"
    if component.lower() == "other":
        yield "component", "other is not a single component: give the Redfish Id of the part instead"
    elif component.lower() not in BASELINE_KINDS and not REDFISH_ID.match(component):
        yield "component", (f"{_shown(component)} is neither {', '.join(BASELINE_KINDS)} nor a Redfish Id "
                            "(letters, digits, _ . : -, up to 64)")
    if not version:
        yield "version", "empty: give the version the component should run"
    elif len(version) > MAX_VERSION:
        yield "version", f"longer than {MAX_VERSION} characters"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "…")


def replace_baselines(session: Session, principal: Principal, rows: list[BaselineRow], source: str) -> dict[str, int]:
    """Replace the baseline of every resource class in `rows` with those rows; rows per class."""
    principal.require_role(Role.INFRA_ADMIN, action="change firmware baselines")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.resource_class] = counts.get(row.resource_class, 0) + 1
    session.exec(delete(FirmwareBaseline).where(col(FirmwareBaseline.scope).in_(list(counts))))
    now = utcnow()
    session.add_all([FirmwareBaseline(scope=row.resource_class, component=row.component, version=row.version,
                                      updated_at=now, updated_by=principal.username) for row in rows])
    audit.record(session, principal, "replace", "firmware_baseline", source, detail={"rows": dict(sorted(counts.items()))})
    session.flush()
    return dict(sorted(counts.items()))


def list_baselines(session: Session, principal: Principal) -> list[FirmwareBaseline]:
    """Every baseline entry, by resource class and component (global roles only)."""
    require_fleet_view(principal, "read firmware baselines")
    return list(session.exec(select(FirmwareBaseline).order_by(FirmwareBaseline.scope, FirmwareBaseline.component)))


def require_fleet_view(principal: Principal, action: str) -> None:
    """Forbidden unless the caller has a global role (infra-admin, finance)."""
    principal.require_role(Role.INFRA_ADMIN, Role.FINANCE, action=action)


def baselines_public(rows: Iterable[FirmwareBaseline]) -> list[BaselinePublic]:
    """Stored entries in API shape."""
    return [BaselinePublic(resource_class=r.scope, component=r.component, version=r.version, updated_at=r.updated_at,
                           updated_by=r.updated_by) for r in rows]


def import_csv(session: Session, principal: Principal, text: str, source: str) -> dict[str, int]:
    """Validate a baseline CSV whole, then replace the baselines it names; rows per resource class."""
    principal.require_role(Role.INFRA_ADMIN, action="change firmware baselines")
    return replace_baselines(session, principal, validate_rows(parse_baseline_csv(text), known_scopes(session)), source)

