"""`/api/v1/nodes`, `/api/v1/nodes/{id}/actions`, `/api/v1/nodes/actions` and `/api/v1/operations`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from fleet import nodes as node_service
from fleet.health import NodeHealth, node_health
from fleet.node_history import visible_events
from fleet.models import Node, Operation
from fleet.operations import ActionParams, OperationPublic, plan_action
from fleet.operations import to_public as operations_public
from fleet.provisioning.actions import Action
from fleet.runtime import FleetRuntime, runtime_of
from fleet.schemas import NodeCreate, NodeName, NodePublic, NodeUpdate, Tag
from kiln.api.deps import CurrentPrincipal, RowId, SessionDep
from kiln.db import MAX_INTEGER
from kiln.errors import NotFound, ValidationFailed
from kiln.telemetry import in_this_context

router = APIRouter(prefix="/api/v1", tags=["nodes"])


def get_runtime(request: Request) -> FleetRuntime:
    """The process's fleet runtime (drivers, secret box, runner)."""
    return runtime_of(request.app.state)


Runtime = Annotated[FleetRuntime, Depends(get_runtime)]


class ActionRequest(ActionParams):
    """An action on one node."""

    model_config = ConfigDict(extra="forbid")
    action: Action


class BulkActionRequest(ActionRequest):
    """An action on a selection of nodes: names, or all nodes matching tag/rack/state, or all."""

    names: list[NodeName] = Field(default_factory=list)
    tag: Tag | None = None
    rack: str | None = None
    state: str | None = None
    all: bool = False


class BulkAccepted(BaseModel):
    """A started bulk action: follow it with GET /api/v1/operations?bulk_id=…"""

    bulk_id: str | None
    operations: list[OperationPublic]


class EventPublic(BaseModel):
    """One line of a node's history."""

    at: object
    kind: str
    message: str
    actor: str
    operation_id: int | None


@router.get("/nodes", response_model=list[NodePublic], summary="List nodes")
def list_endpoint(
    session: SessionDep,
    principal: CurrentPrincipal,
    tag: str | None = None,
    rack: str | None = None,
    state: str | None = None,
    provisioner: str | None = None,
    limit: Annotated[int | None, Query(ge=1, le=10000, description="At most this many nodes (by name); all by default.")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_INTEGER, description="Skip this many nodes first (by name).")] = 0,
) -> Response:
    """All nodes for global roles; the nodes leased to your tenants otherwise, by name. With `limit`
    or `offset`, one page of them, and `X-Total-Count` says how many match in all."""
    # JSON made here (fleet.nodes.public_json): FastAPI would validate 10,000 nodes again, then encode them twice
    body = node_service.public_json(session, principal, tag=tag, rack=rack, state=state, provisioner=provisioner,
                                    limit=limit, offset=offset)
    response = Response(body, media_type="application/json")
    if limit is not None or offset:
        response.headers["X-Total-Count"] = str(node_service.count_nodes(
            session, principal, tag=tag, rack=rack, state=state, provisioner=provisioner))
    return response


@router.post("/nodes", response_model=NodePublic, status_code=201, summary="Enroll a node (infra-admin)")
def create_endpoint(data: NodeCreate, session: SessionDep, principal: CurrentPrincipal, runtime: Runtime):
    """Register the node with its provisioner and in Kiln; on failure neither keeps it."""
    node = node_service.create_node(session, principal, data, runtime.drivers, runtime.box)
    return node_service.to_public(session, principal, [node])[0]


@router.get("/nodes/{node_id}", response_model=NodePublic, summary="Read a node")
def read_endpoint(node_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """One node; 404 when it does not exist or is not leased to you."""
    return node_service.to_public(session, principal, [node_service.get_node(session, principal, node_id)])[0]


@router.patch("/nodes/{node_id}", response_model=NodePublic, summary="Change a node (infra-admin)")
def update_endpoint(node_id: RowId, data: NodeUpdate, session: SessionDep, principal: CurrentPrincipal):
    """Change resource class, rack, tags, facts or GPUs."""
    return node_service.to_public(session, principal, [node_service.update_node(session, principal, node_id, data)])[0]


@router.delete("/nodes/{node_id}", status_code=204, summary="Delete a node (infra-admin)")
def delete_endpoint(node_id: RowId, session: SessionDep, principal: CurrentPrincipal, runtime: Runtime) -> Response:
    """Remove the node from its provisioner and from Kiln."""
    node_service.delete_node(session, principal, node_id, runtime.drivers, runtime.box)
    return Response(status_code=204)


@router.get("/nodes/{node_id}/events", response_model=list[EventPublic], summary="A node's history")
def events_endpoint(
    node_id: RowId, session: SessionDep, principal: CurrentPrincipal, limit: Annotated[int, Query(ge=1, le=1000)] = 100
):
    """Newest first: enrolment, actions and their results, state changes seen by the sync, sensor
    threshold crossings, BMC loss and recovery, XID errors. A tenant sees what happened since its
    lease began, without who did it."""
    node = node_service.get_node(session, principal, node_id)
    return [EventPublic(**e.model_dump()) for e in visible_events(session, principal, node.id, limit)]


@router.get("/nodes/{node_id}/health", response_model=NodeHealth, summary="A node's health now")
def health_endpoint(node_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """BMC reachability, power, sensors with threshold state and GPUs, as last collected."""
    return node_health(session, principal, node_id)


def _start(background: BackgroundTasks, runtime: FleetRuntime, operations: list[Operation]) -> None:
    # Runs after the response, i.e. after this request's transaction has committed the operations.
    for operation in operations:
        # in this request's context: the operation's log lines carry its request id, its span nests in the request's
        background.add_task(runtime.pool.submit, in_this_context(runtime.runner.run), operation.id)


@router.post("/nodes/{node_id}/actions", response_model=OperationPublic, status_code=202, summary="Act on a node")
def action_endpoint(
    node_id: RowId, data: ActionRequest, background: BackgroundTasks, session: SessionDep, principal: CurrentPrincipal,
    runtime: Runtime,
):
    """Start an action; follow it with GET /api/v1/operations/{id}."""
    node = node_service.get_node(session, principal, node_id)
    operations = plan_action(session, principal, [node], data.action, ActionParams(**data.model_dump(exclude={"action"})))
    _start(background, runtime, operations)
    return operations_public(session, operations)[0]


@router.post("/nodes/actions", response_model=BulkAccepted, status_code=202, summary="Act on many nodes")
def bulk_action_endpoint(
    data: BulkActionRequest, background: BackgroundTasks, session: SessionDep, principal: CurrentPrincipal,
    runtime: Runtime,
):
    """Start an action on a selection, KILN_BULK_CONCURRENCY nodes at a time."""
    if not (data.names or data.tag or data.rack or data.state or data.all):
        raise ValidationFailed("names", "select nodes by names, tag, rack or state, or set all=true")
    selected = node_service.list_nodes(session, principal, names=data.names, tag=data.tag, rack=data.rack, state=data.state)
    missing = sorted(set(data.names) - {n.name for n in selected})
    if missing:
        raise NotFound(f"no such node: {', '.join(missing)}")
    if not selected:
        raise NotFound("the selection matches no node")
    params = ActionParams(**data.model_dump(include=set(ActionParams.model_fields)))
    operations = plan_action(session, principal, selected, data.action, params)
    _start(background, runtime, operations)
    return BulkAccepted(bulk_id=operations[0].bulk_id, operations=operations_public(session, operations))


@router.get("/operations", response_model=list[OperationPublic], tags=["operations"], summary="List operations")
def operations_endpoint(
    session: SessionDep,
    principal: CurrentPrincipal,
    bulk_id: str | None = None,
    node_id: RowId | None = None,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
):
    """Newest first; only operations on nodes you may see."""
    statement = select(Operation).order_by(col(Operation.id).desc()).limit(limit)
    statement = statement.where(col(Operation.node_id).in_(node_service.visible(select(Node.id), principal)))
    if bulk_id:
        statement = statement.where(Operation.bulk_id == bulk_id)
    if node_id:
        statement = statement.where(Operation.node_id == node_id)
    if status:
        statement = statement.where(Operation.status == status)
    return operations_public(session, session.exec(statement).all())


@router.get("/operations/{operation_id}", response_model=OperationPublic, tags=["operations"], summary="Read an operation")
def operation_endpoint(operation_id: RowId, session: SessionDep, principal: CurrentPrincipal):
    """One operation; 404 when its node is not visible to you."""
    operation = session.get(Operation, operation_id)
    node_visible = operation is not None and session.exec(
        node_service.visible(select(Node.id).where(Node.id == operation.node_id), principal)
    ).first()
    if not node_visible:
        raise NotFound(f"operation {operation_id} not found")
    return operations_public(session, [operation])[0]
