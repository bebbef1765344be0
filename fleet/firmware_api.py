"""`/api/v1/firmware/baselines` (read: infra-admin, finance; replace: infra-admin) and
`/api/v1/firmware/compliance` (scoped like node listing), JSON or CSV."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Body, Query
from fastapi.responses import Response
from pydantic import BaseModel

from fleet import firmware as baseline_service
from fleet.firmware_compliance import STATUSES, ComplianceRow, compliance, compliance_csv
from kiln.api.deps import CurrentPrincipal, SessionDep
from kiln.errors import ValidationFailed

router = APIRouter(prefix="/api/v1/firmware", tags=["firmware"])


class Format(StrEnum):
    """The answer's format."""

    json = "json"
    csv = "csv"


class BaselinesReplaced(BaseModel):
    """How many entries each resource class named in the import now has."""

    replaced: dict[str, int]


@router.get("/baselines", response_model=list[baseline_service.BaselinePublic], summary="Firmware baselines (infra-admin, finance)")
def list_baselines_endpoint(session: SessionDep, principal: CurrentPrincipal):
    """Every entry, by resource class (or gpu:<model>) and component."""
    return baseline_service.baselines_public(baseline_service.list_baselines(session, principal))


@router.put("/baselines", response_model=BaselinesReplaced, summary="Replace firmware baselines from CSV (infra-admin)")
def replace_baselines_endpoint(
    session: SessionDep, principal: CurrentPrincipal,
    text: Annotated[str, Body(media_type="text/csv", description="resource_class,component,version")],
):
    """All rows or none (400 naming each bad row and column); each resource class in the file gets exactly its rows."""
    return BaselinesReplaced(replaced=baseline_service.import_csv(session, principal, text, "api"))


@router.get("/compliance", response_model=list[ComplianceRow], summary="Firmware compliance per node and component")
def compliance_endpoint(
    session: SessionDep, principal: CurrentPrincipal,
    status: Annotated[list[str], Query(description="Only these statuses (repeat): ok, behind, ahead, different, missing, unknown")] = [],  # noqa: B006
    node: str | None = None,
    format: Format = Format.json,
):
    """Each visible node's firmware against its baseline: expected, actual, status; `format=csv` for a file."""
    unknown = sorted(set(status) - set(STATUSES))
    if unknown:
        raise ValidationFailed("status", f"unknown status {', '.join(unknown)}; expected one of {', '.join(STATUSES)}")
    rows = compliance(session, principal, statuses=status, node=node)
    if format == Format.csv:
        return Response(compliance_csv(rows), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="kiln-firmware-compliance.csv"'})
    return rows
