"""Bulk enrolment from CSV or YAML: validate every row first, then enroll, idempotently.

CSV header: `name,provisioner,bmc_address,bmc_username,bmc_password` and optionally
`redfish_address,boot_mac,resource_class,rack,zone,tags,ironic_driver,ipmi_cipher_suite,ipmi_privilege,
gpu_model,gpu_count,gpu_memory_mib` (tags separated by `;`; `redfish_address`: the second, collection-only
Redfish address of an `ipmi://` node's BMC, same credentials). YAML: a list of mappings with the same keys (or
`nodes:` holding one), where `gpus` and `facts` may also be given in full.

Rules: every problem in the file is reported with its row number; if any row is invalid
nothing is enrolled (unless `skip_invalid`); a row naming a node that already exists with
the same definition is left alone, so re-importing a file changes nothing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.models import Node
from fleet.nodes import create_node, tags_of
from fleet.provisioning.registry import Drivers
from fleet.schemas import NodeCreate
from kiln.auth import Principal
from kiln.errors import BadRequest, KilnError
from kiln.security import SecretBox
from kiln.validation import clean_message

REQUIRED_COLUMNS = ("name", "provisioner", "bmc_address", "bmc_username", "bmc_password")
OPTIONAL_COLUMNS = (
    "redfish_address", "boot_mac", "resource_class", "rack", "zone", "tags", "ironic_driver", "ipmi_cipher_suite", "ipmi_privilege",
    "gpu_model", "gpu_count", "gpu_memory_mib",
)
COMPARED_FIELDS = (
    "provisioner", "bmc_address", "redfish_address", "bmc_username", "boot_mac", "resource_class", "rack", "zone", "ipmi_cipher_suite",
    "ipmi_privilege",
)
# Text fields: a plain YAML scalar that YAML 1.1 would read as a number or boolean keeps its text
# (an unquoted MAC like 52:54:00:12:34:56 is a base-60 integer to PyYAML).
TEXT_FIELDS = REQUIRED_COLUMNS + ("redfish_address", "boot_mac", "resource_class", "rack", "zone", "ironic_driver", "ipmi_privilege",
                                  "gpu_model")


@dataclass
class RowResult:
    """What happened to one row."""

    row: int
    name: str
    status: str  # created | unchanged | invalid | failed
    message: str = ""


@dataclass
class ImportReport:
    """Per-row results of an import."""

    rows: list[RowResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        """How many rows ended with `status`."""
        return sum(1 for r in self.rows if r.status == status)

    @property
    def ok(self) -> bool:
        """True when no row was invalid or failed."""
        return not any(r.status in {"invalid", "failed"} for r in self.rows)


class InvalidImport(BadRequest):
    """The file has invalid rows; `problems` lists each with its row number."""

    def __init__(self, path: str, problems: list[RowResult]):
        lines = [f"row {p.row} ({p.name or '?'}): {p.message}" for p in problems]
        super().__init__(f"{path}: {len(problems)} invalid row(s), nothing imported: " + "; ".join(lines),
                         errors=[{"row": p.row, "name": p.name, "message": p.message} for p in problems])
        self.problems = problems


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(row number, raw mapping) for each node in a CSV or YAML file."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets write a BOM
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}") from None
    if path.suffix.lower() in {".yaml", ".yml"}:
        return _yaml_rows(path, text)
    if path.suffix.lower() == ".csv":
        return _csv_rows(path, text)
    raise BadRequest(f"{path}: import files must end in .csv, .yaml or .yml")


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        parts = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + (
            [f"unknown column(s) {', '.join(unknown)}"] if unknown else []
        )
        raise BadRequest(f"{path} line 1: {'; '.join(parts)} (header must be {','.join(REQUIRED_COLUMNS)}[,...])")
    rows = []
    for raw in reader:
        values = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        row = {k: v for k, v in values.items() if v != ""}
        if None in raw:  # more fields than columns: an unquoted comma shifted the values
            problem = f"{len(header) + len(raw[None])} fields, but the header has {len(header)} columns"
            row = {"name": values.get("name", ""), "__invalid__": problem}
        rows.append((reader.line_num, row))
    return rows


def _yaml_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise BadRequest(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from None
    if root is not None and isinstance(root, yaml.MappingNode):
        root = next((v for k, v in root.value if k.value == "nodes"), None)
    if root is None or not isinstance(root, yaml.SequenceNode):
        raise BadRequest(f"{path}: expected a list of nodes (or a mapping with key 'nodes')")
    rows = []
    for item in root.value:
        value = yaml.safe_load(yaml.serialize(item))
        if not isinstance(value, dict):
            value = {"__invalid__": "each entry must be a mapping of node fields"}
        for key, node in item.value if isinstance(item, yaml.MappingNode) else []:
            plain = isinstance(node, yaml.ScalarNode) and node.style is None
            if key.value in TEXT_FIELDS and plain and isinstance(value.get(key.value), (int, float, bool)):
                value[key.value] = node.value
        rows.append((item.start_mark.line + 1, value))
    return rows


def _to_create(raw: dict[str, Any]) -> NodeCreate:
    values = dict(raw)
    if "__invalid__" in values:
        raise ValueError(values["__invalid__"])
    if isinstance(values.get("tags"), str):
        values["tags"] = [t for t in values["tags"].replace(";", " ").split() if t]
    if "gpu_model" in values or "gpu_count" in values:
        model = values.pop("gpu_model", None)
        count = values.pop("gpu_count", 0) or 0
        memory = values.pop("gpu_memory_mib", None)
        try:
            count = int(count)
        except ValueError:
            raise ValueError(f"gpu_count must be a whole number, not {count!r}") from None
        if count and not model:
            raise ValueError("gpu_count needs gpu_model")
        if model and not count:
            raise ValueError("gpu_model needs gpu_count")
        values["gpus"] = [{"index": i, "model": model, "memory_mib": memory} for i in range(count)]
    values.pop("gpu_memory_mib", None)
    return NodeCreate.model_validate(values)


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {clean_message(e['msg'])}" for e in error.errors())


def _same(node: Node, tags: list[str], data: NodeCreate) -> bool:
    return (
        all(getattr(node, f) == getattr(data, f) for f in COMPARED_FIELDS)
        and node.hardware_type == data.ironic_driver
        and sorted(tags) == sorted(set(data.tags))
    )


def validate_rows(session: Session, rows: list[tuple[int, dict[str, Any]]]) -> tuple[list[tuple[int, NodeCreate]], ImportReport]:
    """Parse and check every row; returns the nodes to enroll and the report so far."""
    report, todo, seen_names, seen_macs = ImportReport(), [], {}, {}
    existing = {n.name: n for n in session.exec(select(Node)).all()}
    existing_tags = tags_of(session, [n.id for n in existing.values()])
    macs = {n.boot_mac: n.name for n in existing.values() if n.boot_mac}
    for row, raw in rows:
        name = str(raw.get("name", ""))
        try:
            data = _to_create(raw)
        except ValidationError as exc:
            report.rows.append(RowResult(row, name, "invalid", _describe(exc)))
            continue
        except (ValueError, TypeError) as exc:
            report.rows.append(RowResult(row, name, "invalid", str(exc)))
            continue
        problem = None
        if data.name in seen_names:
            problem = f"duplicate name: also on row {seen_names[data.name]}"
        elif data.boot_mac and data.boot_mac in seen_macs:
            problem = f"duplicate boot_mac {data.boot_mac}: also on row {seen_macs[data.boot_mac]}"
        elif data.name in existing:
            node = existing[data.name]
            if _same(node, existing_tags.get(node.id, []), data):
                report.rows.append(RowResult(row, data.name, "unchanged", "already enrolled"))
            else:
                problem = "a node with this name exists with a different definition (delete it first to re-enroll)"
        elif data.boot_mac and macs.get(data.boot_mac):
            problem = f"boot_mac {data.boot_mac} already belongs to node '{macs[data.boot_mac]}'"
        seen_names[data.name] = row
        if data.boot_mac:
            seen_macs[data.boot_mac] = row
        if problem:
            report.rows.append(RowResult(row, data.name, "invalid", problem))
        elif data.name not in existing:
            todo.append((row, data))
    return todo, report


def import_nodes(
    engine: Engine,
    path: Path,
    principal: Principal,
    drivers: Drivers,
    box: SecretBox,
    *,
    skip_invalid: bool = False,
    concurrency: int = 20,
    on_row: Callable[[RowResult], None] | None = None,
) -> ImportReport:
    """Validate the whole file, then enroll its new nodes `concurrency` at a time."""
    rows = read_rows(path)
    with Session(engine) as session:
        todo, report = validate_rows(session, rows)
    invalid = [r for r in report.rows if r.status == "invalid"]
    if invalid and not skip_invalid:
        raise InvalidImport(str(path), invalid)

    def enroll(item: tuple[int, NodeCreate]) -> RowResult:
        row, data = item
        with Session(engine, expire_on_commit=False) as session:
            try:
                create_node(session, principal, data, drivers, box)
                session.commit()
                result = RowResult(row, data.name, "created")
            except KilnError as exc:
                session.rollback()
                result = RowResult(row, data.name, "failed", exc.detail)
        if on_row:
            on_row(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        report.rows.extend(pool.map(enroll, todo))
    report.rows.sort(key=lambda r: r.row)
    return report
