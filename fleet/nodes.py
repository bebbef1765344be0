"""Node inventory: enroll (Kiln row + backend node, all or nothing), read, change, delete.

Tenants see a node only while one of their tenants holds an open lease on it; global roles
see every node. BMC passwords are encrypted with the secret box and never leave this module
except inside a `NodeTarget` handed to a driver.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic_core import to_json
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from fleet.bmc import parse_bmc_address
from fleet.models import Gpu, Node, NodeEvent, NodeTag
from fleet.provisioning.states import PowerState, ProvisionState
from fleet.schemas import GpuSpec, NodeCreate, NodePublic, NodeUpdate
from kiln import audit
from kiln.auth import Principal
from kiln.db import among, first_or_not_found, utcnow
from kiln.errors import Conflict, ValidationFailed
from kiln.roles import Role

if TYPE_CHECKING:  # only annotations here: listing nodes need not load the drivers
    from fleet.provisioning.base import BackendNode, NodeTarget
    from fleet.provisioning.registry import Drivers
    from kiln.security import SecretBox

INFRA_ONLY_FIELDS = {"bmc_address", "redfish_address", "bmc_username", "external_id", "last_error"}
PUBLIC_FIELDS = tuple(NodePublic.model_fields)  # in the API's order
NODE_FIELDS = tuple(name for name in PUBLIC_FIELDS if name not in ("bmc_password_set", "tags", "gpus"))
GPU_FIELDS = tuple(GpuSpec.model_fields)
GPU_COLUMNS = tuple(getattr(Gpu, name) for name in GPU_FIELDS)


def visible(statement, principal: Principal):
    """Restrict a SELECT over Node to nodes the caller may see (leased whole, or a GPU instance of
    which is leased, to one of its tenants)."""
    if principal.sees_all_tenants:
        return statement
    from fleet.tenancy_models import GpuInstanceLease, Lease  # leases only matter to tenant roles
    from fleet.usage import in_force

    now = utcnow()
    leased = principal.scope(select(Lease.node_id).where(in_force(now)), Lease.tenant_id)
    instances = principal.scope(select(GpuInstanceLease.node_id).where(in_force(now, GpuInstanceLease)),
                                GpuInstanceLease.tenant_id)
    return statement.where(col(Node.id).in_(leased) | col(Node.id).in_(instances))


def list_nodes(
    session: Session,
    principal: Principal,
    *,
    names: Iterable[str] = (),
    tag: str | None = None,
    rack: str | None = None,
    state: str | None = None,
    provisioner: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Node]:
    """Nodes the caller may see, by name, optionally filtered; `limit` of them after the first `offset`."""
    statement = _filtered(visible(select(Node).order_by(Node.name), principal), names, tag, rack, state, provisioner)
    return list(session.exec(statement.offset(offset or None).limit(limit)).all())


def count_nodes(session: Session, principal: Principal, *, tag: str | None = None, rack: str | None = None,
                state: str | None = None, provisioner: str | None = None) -> int:
    """How many nodes `list_nodes` gives with the same filters and no limit."""
    statement = visible(select(func.count()).select_from(Node), principal)
    return session.exec(_filtered(statement, (), tag, rack, state, provisioner)).one()


def _filtered(statement, names: Iterable[str] = (), tag: str | None = None, rack: str | None = None,
              state: str | None = None, provisioner: str | None = None):
    names = list(names)
    if names:
        statement = statement.where(col(Node.name).in_(names))
    if tag:
        statement = statement.where(col(Node.id).in_(select(NodeTag.node_id).where(NodeTag.tag == tag)))
    if rack:
        statement = statement.where(Node.rack == rack)
    if state:
        statement = statement.where(Node.provision_state == state)
    if provisioner:
        statement = statement.where(Node.provisioner == provisioner)
    return statement


def get_node(session: Session, principal: Principal, node_id: int) -> Node:
    """One node the caller may see; NotFound otherwise."""
    return first_or_not_found(session, visible(select(Node).where(Node.id == node_id), principal), f"node {node_id} not found")


def get_node_by_name(session: Session, principal: Principal, name: str) -> Node:
    """The node called `name`, if the caller may see it."""
    return first_or_not_found(session, visible(select(Node).where(Node.name == name), principal), f"no such node: {name}")


def tags_of(session: Session, node_ids: list[int]) -> dict[int, list[str]]:
    """Tags per node id."""
    tags: dict[int, list[str]] = {}
    wanted = set(node_ids)
    rows = session.exec(select(NodeTag.node_id, NodeTag.tag).where(among(NodeTag.node_id, node_ids)).order_by(NodeTag.tag))
    for node_id, tag in rows.all():
        if node_id in wanted:
            tags.setdefault(node_id, []).append(tag)
    return tags


def to_public(session: Session, principal: Principal, nodes: list[Node]) -> list[NodePublic]:
    """Nodes with their GPUs and tags (two queries for any number of nodes).

    Tenants see the nodes they lease but not how they are managed: BMC address and user,
    backend id and last backend error are blank for tenant roles."""
    rows = [{**{name: getattr(node, name) for name in NODE_FIELDS},
             "bmc_password_set": node.bmc_password_encrypted is not None} for node in nodes]
    return [NodePublic.model_validate(public) for public in _public(session, principal, rows)]


def public_json(session: Session, principal: Principal, *, limit: int | None = None, offset: int = 0,
                **filters: str | None) -> bytes:
    """`list_nodes` → `to_public` as the API's JSON, the same bytes, made from the node table's columns
    and no model objects: for 10,000 nodes, objects and their validation cost seconds."""
    columns = [getattr(Node, name) for name in NODE_FIELDS]
    statement = select(*columns, col(Node.bmc_password_encrypted).is_not(None).label("bmc_password_set"))
    statement = _filtered(visible(statement.order_by(Node.name), principal), (), **filters)
    rows = [row._asdict() for row in session.connection().execute(statement.offset(offset or None).limit(limit)).all()]
    return to_json(_public(session, principal, rows))


def _public(session: Session, principal: Principal, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = [row["id"] for row in rows]
    wanted = set(ids)
    gpus: dict[int, list[dict]] = {}
    # columns, not Gpu objects, and no list of 10,000 bound ids: 80,000 GPUs cost seconds as objects
    for node_id, *values in session.connection().execute(  # Core rows: the ORM's row handling doubles the cost
            select(Gpu.node_id, *GPU_COLUMNS).where(among(Gpu.node_id, ids)).order_by(Gpu.node_id, Gpu.index)).all():
        if node_id in wanted:
            gpus.setdefault(node_id, []).append(dict(zip(GPU_FIELDS, values, strict=True)))
    tags = tags_of(session, ids)
    hidden = set() if principal.sees_all_tenants else INFRA_ONLY_FIELDS
    shown = [(name, name in hidden) for name in PUBLIC_FIELDS]
    public = []
    for row in rows:
        row["tags"], row["gpus"] = tags.get(row["id"], []), gpus.get(row["id"], [])
        public.append({name: None if blank else row[name] for name, blank in shown})  # the API's field order
    return public


def node_target(node: Node, box: SecretBox, tags: list[str]) -> NodeTarget:
    """What a driver needs to act on `node`, with its BMC password decrypted."""
    from fleet.provisioning.base import BackendNode, NodeTarget  # driver-facing: not for reading nodes

    password = box.decrypt(node.bmc_password_encrypted) if node.bmc_password_encrypted else None
    known = BackendNode(
        external_id=node.external_id or "",
        provision_state=ProvisionState(node.provision_state),
        power_state=PowerState(node.power_state) if node.power_state else None,
        maintenance=node.maintenance,
        maintenance_reason=node.maintenance_reason,
        last_error=node.last_error,
    )
    properties = {name: value for name, value in (("ipmi_cipher_suite", node.ipmi_cipher_suite),
                                                  ("ipmi_privilege", node.ipmi_privilege)) if value is not None}
    return NodeTarget(
        name=node.name,
        external_id=node.external_id,
        bmc_driver=node.bmc_driver,
        bmc_address=node.bmc_address,
        bmc_username=node.bmc_username,
        bmc_password=password,
        boot_mac=node.boot_mac,
        resource_class=node.resource_class,
        hardware_type=node.hardware_type,
        properties=properties,
        tags=tuple(tags),
        known=known if node.external_id else None,
    )


def apply_backend_state(node: Node, backend: BackendNode) -> bool:
    """Copy the backend's view onto Kiln's mirror; True when anything changed."""
    values = {
        "external_id": backend.external_id,
        "provision_state": backend.provision_state.value,
        "target_provision_state": backend.target_provision_state or None,
        "power_state": backend.power_state.value if backend.power_state else None,
        "maintenance": backend.maintenance,
        "maintenance_reason": backend.maintenance_reason,
        "last_error": (backend.last_error or "")[:2000] or None,
    }
    changed = any(getattr(node, key) != value for key, value in values.items())
    node.sqlmodel_update(values)
    node.synced_at = utcnow()
    if changed:
        node.updated_at = node.synced_at
    return changed


def add_event(session: Session, node: Node, kind: str, message: str, actor: str = "", operation_id: int | None = None) -> None:
    """Append a line to the node's history."""
    session.add(NodeEvent(node_id=node.id, kind=kind, message=message[:2000], actor=actor, operation_id=operation_id))


def _check_unique(session: Session, data: NodeCreate) -> None:
    if session.exec(select(Node.id).where(Node.name == data.name)).first():
        raise Conflict(f"a node named '{data.name}' already exists")
    if data.boot_mac and session.exec(select(Node.name).where(Node.boot_mac == data.boot_mac)).first():
        owner = session.exec(select(Node.name).where(Node.boot_mac == data.boot_mac)).first()
        raise Conflict(f"node '{data.name}': boot MAC {data.boot_mac} already belongs to node '{owner}'")


def _set_gpus_and_tags(session: Session, node: Node, gpus: list[GpuSpec] | None, tags: list[str] | None) -> None:
    if gpus is not None:
        known = set()
        for gpu in session.exec(select(Gpu).where(Gpu.node_id == node.id)).all():
            known.add(gpu.uuid)
            session.delete(gpu)
        session.flush()
        for spec in gpus:
            session.add(Gpu(node_id=node.id, **spec.model_dump()))
        learned = {spec.uuid for spec in gpus if spec.uuid} - known
        if learned:  # their utilisation samples may have been summed without them
            from collectors.utilisation_days import gpus_learned  # noqa: PLC0415 - not for `kiln nodes list`

            session.flush()
            gpus_learned(session, learned)
    if tags is not None:
        for tag in session.exec(select(NodeTag).where(NodeTag.node_id == node.id)).all():
            session.delete(tag)
        session.flush()
        for tag in dict.fromkeys(tags):
            session.add(NodeTag(node_id=node.id, tag=tag))


def create_node(session: Session, principal: Principal, data: NodeCreate, drivers: Drivers, box: SecretBox) -> Node:
    """Enroll a node with its backend and record it; on any failure neither side keeps it."""
    from fleet.errors import backend_error
    from fleet.provisioning.base import DriverError

    principal.require_role(Role.INFRA_ADMIN, action="enroll nodes")
    _check_unique(session, data)
    address = parse_bmc_address(data.bmc_address)
    node = Node(
        name=data.name,
        provisioner=data.provisioner,
        hardware_type=data.ironic_driver,
        bmc_driver=address.driver,
        bmc_address=data.bmc_address,
        redfish_address=data.redfish_address,
        bmc_username=data.bmc_username,
        bmc_password_encrypted=box.encrypt(data.bmc_password.get_secret_value()) if data.bmc_password else None,
        ipmi_cipher_suite=data.ipmi_cipher_suite,
        ipmi_privilege=data.ipmi_privilege,
        boot_mac=data.boot_mac,
        resource_class=data.resource_class,
        rack=data.rack,
        zone=data.zone,
        facts=data.facts.model_dump(exclude_defaults=True),
        provision_state=ProvisionState.ENROLL.value,
    )
    driver = drivers.get(data.provisioner)
    target = node_target(node, box, data.tags)
    try:
        backend = driver.enroll(target)
    except DriverError as exc:
        raise backend_error(data.name, "enroll", exc) from None
    apply_backend_state(node, backend)
    try:
        session.add(node)
        session.flush()
        _set_gpus_and_tags(session, node, data.gpus, data.tags)
        session.flush()
    except IntegrityError:
        session.rollback()
        driver.remove(node_target(node, box, data.tags))
        raise Conflict(f"node '{data.name}' conflicts with an existing node (name or boot MAC)") from None
    from collectors.fleet_power import forget_entity  # enrolling and deleting only: `kiln nodes list` does not load collectors

    forget_entity(session, node.name)  # the fleet's stored power sums are over enrolled nodes
    add_event(session, node, "enrolled", f"enrolled with {data.provisioner} as {backend.external_id}", principal.username)
    audit.record(session, principal, "create", "node", node.id, detail={"name": node.name, "provisioner": node.provisioner})
    return node


def update_node(session: Session, principal: Principal, node_id: int, data: NodeUpdate) -> Node:
    """Change Kiln-owned fields of a node: resource class, rack, carbon zone, tags, facts, GPUs,
    and its second, collection-only Redfish address (only beside an `ipmi://` bmc_address)."""
    node = get_node(session, principal, node_id)
    principal.require_role(Role.INFRA_ADMIN, action="change nodes")
    changes = data.model_dump(exclude_unset=True)
    if changes.get("redfish_address") and node.bmc_driver != "ipmi":
        raise ValidationFailed("redfish_address", f"node '{node.name}' has a {node.bmc_driver} bmc_address: a "
                               "second Redfish address is only for nodes whose bmc_address is ipmi://")
    for key in ("resource_class", "rack", "zone", "redfish_address"):
        if key in changes:
            setattr(node, key, changes[key])
    if data.facts is not None:
        node.facts = data.facts.model_dump(exclude_defaults=True)
    if data.gpus is not None:
        from fleet.instance_leases import check_gpus_kept  # it imports this module (add_event)
        check_gpus_kept(session, principal, node, data.gpus)
    _set_gpus_and_tags(session, node, data.gpus, data.tags)
    node.updated_at = utcnow()
    session.add(node)
    session.flush()
    add_event(session, node, "edit", f"changed {', '.join(sorted(changes)) or 'nothing'}", principal.username)
    audit.record(session, principal, "update", "node", node.id, detail={"fields": sorted(changes)})
    return node


def delete_node(session: Session, principal: Principal, node_id: int, drivers: Drivers, box: SecretBox) -> None:
    """Remove a node from its backend and from Kiln; refused while it has lease history."""
    node = get_node(session, principal, node_id)
    principal.require_role(Role.INFRA_ADMIN, action="delete nodes")
    from fleet.errors import backend_error
    from fleet.provisioning.base import DriverError
    from fleet.tenancy_models import GpuInstanceLease, Lease

    if (session.exec(select(Lease.id).where(Lease.node_id == node.id)).first()
            or session.exec(select(GpuInstanceLease.id).where(GpuInstanceLease.node_id == node.id)).first()):
        raise Conflict(f"node '{node.name}' has lease history that billing needs: it cannot be deleted")
    if node.external_id:
        try:
            drivers.get(node.provisioner).remove(node_target(node, box, tags_of(session, [node.id]).get(node.id, [])))
        except DriverError as exc:
            raise backend_error(node.name, "delete", exc) from None
    audit.record(session, principal, "delete", "node", node.id, detail={"name": node.name})
    from collectors.fleet_power import forget_entity

    forget_entity(session, node.name)
    session.delete(node)
    session.flush()
