"""Local users, their roles and tenant memberships.

Who may do what:
- infra-admin: everything; finance: no access to users;
- tenant-admin: sees and manages tenant-admin/tenant-member users of their own tenants;
- tenant-member: sees the users of their own tenants;
- everyone: reads `me` and changes their own name, e-mail and password.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from sqlmodel import Session, col, func, select

from kiln import audit, sessions
from kiln.auth import Principal
from kiln.errors import Conflict, Forbidden, NotFound, ValidationFailed
from kiln.models import Membership, Tenant, User
from kiln.roles import TENANT_ROLES, Role
from kiln.passwords import password_problem
from kiln.security import hash_password, needs_rehash, verify_password
from kiln.tenants import Slug, tenants_by_slug

USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{1,63}$"
Username = Annotated[
    str, Field(pattern=USERNAME_PATTERN, description="2-64 characters: lower-case letters, digits, `.`, `_`, `-`.")
]
Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
SELF_SERVICE_FIELDS = {"full_name", "email", "password"}
READ_ROLES = (Role.INFRA_ADMIN, Role.TENANT_ADMIN, Role.TENANT_MEMBER)
WRITE_ROLES = (Role.INFRA_ADMIN, Role.TENANT_ADMIN)


def _password_rule(value: SecretStr | None) -> SecretStr | None:
    problem = password_problem(value.get_secret_value()) if value is not None else None
    if problem:
        raise ValueError(problem)
    return value


class UserCreate(BaseModel):
    """Fields to create a user. Tenant roles need `tenants`; global roles must have none."""

    model_config = ConfigDict(extra="forbid")

    username: Username
    role: Role
    tenants: list[Slug] = Field(default_factory=list, description="Slugs of the tenants the user belongs to.")
    password: SecretStr | None = Field(default=None, description="Omit for token-only (or OIDC) users.")
    full_name: str = Field(default="", max_length=200)
    email: Email | None = None

    _check_password = field_validator("password")(_password_rule)


class UserUpdate(BaseModel):
    """Fields of a user that can change; the username is permanent."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    tenants: list[Slug] | None = None
    password: SecretStr | None = None
    full_name: str | None = Field(default=None, max_length=200)
    email: Email | None = None
    is_active: bool | None = None

    _check_password = field_validator("password")(_password_rule)


class UserPublic(BaseModel):
    """A user as the API returns it (never the password hash)."""

    id: int
    username: str
    role: Role
    tenants: list[str]
    full_name: str
    email: str | None
    is_active: bool
    created_at: datetime


def to_public(session: Session, principal: Principal, users: list[User]) -> list[UserPublic]:
    """Users with their tenant slugs, showing only tenants the caller may see."""
    ids = [u.id for u in users]
    rows = session.exec(
        select(Membership.user_id, Tenant.id, Tenant.slug)
        .join(Tenant, Tenant.id == Membership.tenant_id)
        .where(col(Membership.user_id).in_(ids))
        .order_by(Tenant.slug)
    ).all()
    slugs: dict[int, list[str]] = {}
    for user_id, tenant_id, slug in rows:
        if principal.can_see(tenant_id):
            slugs.setdefault(user_id, []).append(slug)
    return [UserPublic(**u.model_dump(exclude={"password_hash", "tenants"}), tenants=slugs.get(u.id, [])) for u in users]


def _user_tenant_ids(session: Session, user_id: int | None) -> set[int]:
    return set(session.exec(select(Membership.tenant_id).where(Membership.user_id == user_id)).all())


def _visible(principal: Principal, tenant_ids: set[int]) -> bool:
    return principal.sees_all_tenants or bool(tenant_ids & principal.tenant_ids)


def list_users(session: Session, principal: Principal) -> list[User]:
    """Users the caller may see, by username."""
    principal.require_role(*READ_ROLES, action="list users")
    statement = select(User).order_by(User.username)
    if not principal.sees_all_tenants:
        members = select(Membership.user_id).where(col(Membership.tenant_id).in_(sorted(principal.tenant_ids)))
        statement = statement.where(col(User.id).in_(members))
    return list(session.exec(statement).all())


def get_user(session: Session, principal: Principal, user_id: int) -> User:
    """One user the caller may see (themselves always); NotFound otherwise."""
    user = session.get(User, user_id)
    if user is not None and user.id == principal.user_id:
        return user
    principal.require_role(*READ_ROLES, action="read users")
    if user is None or not _visible(principal, _user_tenant_ids(session, user_id)):
        raise NotFound(f"user {user_id} not found")
    return user


def get_user_by_username(session: Session, username: str) -> User:
    """The user with this username; NotFound naming it otherwise."""
    user = session.exec(select(User).where(User.username == username)).first()
    if user is None:
        raise NotFound(f"no such user: {username} (see `kiln users list`)")
    return user


def _resolve_tenants(session: Session, principal: Principal, role: Role, slugs: list[str]) -> list[Tenant]:
    if role in TENANT_ROLES and not slugs:
        raise ValidationFailed("tenants", f"role {role.value} needs at least one tenant")
    if role not in TENANT_ROLES and slugs:
        raise ValidationFailed("tenants", f"role {role.value} is global and takes no tenants")
    tenants = tenants_by_slug(session, list(dict.fromkeys(slugs)))
    hidden = [t.slug for t in tenants if not principal.can_see(t.id)]
    if hidden:
        raise NotFound(f"no such tenant: {', '.join(hidden)}")
    return tenants


def _require_manageable(principal: Principal, role: Role, tenant_ids: set[int]) -> None:
    """Forbidden unless the caller may manage a user with this role in these tenants."""
    principal.require_role(*WRITE_ROLES, action="manage users")
    if principal.role == Role.TENANT_ADMIN:
        if role not in TENANT_ROLES:
            raise Forbidden("tenant admins may only manage tenant-admin and tenant-member users")
        if not tenant_ids <= principal.tenant_ids:
            raise Forbidden("tenant admins may only manage users whose tenants they all administer")


def _set_memberships(session: Session, user: User, tenants: list[Tenant]) -> None:
    for membership in session.exec(select(Membership).where(Membership.user_id == user.id)).all():
        session.delete(membership)
    session.flush()
    for tenant in tenants:
        session.add(Membership(user_id=user.id, tenant_id=tenant.id))


def create_user(session: Session, principal: Principal, data: UserCreate) -> User:
    """Create a user with a role and memberships; Conflict when the username is taken."""
    principal.require_role(*WRITE_ROLES, action="create users")
    tenants = _resolve_tenants(session, principal, data.role, data.tenants)
    _require_manageable(principal, data.role, {t.id for t in tenants})
    if session.exec(select(User).where(User.username == data.username)).first():
        raise Conflict(f"a user named '{data.username}' already exists")
    password = data.password.get_secret_value() if data.password else None
    user = User(
        username=data.username,
        role=data.role.value,
        full_name=data.full_name,
        email=data.email,
        password_hash=hash_password(password) if password else None,
    )
    session.add(user)
    session.flush()
    _set_memberships(session, user, tenants)
    detail = {"username": user.username, "role": user.role, "tenants": [t.slug for t in tenants]}
    for tenant in tenants or [None]:
        audit.record(session, principal, "create", "user", user.id, tenant_id=tenant and tenant.id, detail=detail)
    return user


def _active_admins(session: Session) -> int:
    statement = select(func.count()).select_from(User).where(User.role == Role.INFRA_ADMIN.value, User.is_active)
    return session.exec(statement).one()


def _guard_last_admin(session: Session, user: User, demoted: bool) -> None:
    if user.role == Role.INFRA_ADMIN.value and user.is_active and demoted and _active_admins(session) <= 1:
        raise Conflict(f"'{user.username}' is the last active infra-admin: create another one first")


def update_user(session: Session, principal: Principal, user_id: int, data: UserUpdate) -> User:
    """Change a user; users may change their own name, e-mail and password."""
    user = get_user(session, principal, user_id)
    changes = data.model_dump(exclude_unset=True)
    current_tenants = _user_tenant_ids(session, user.id)
    if not (user.id == principal.user_id and set(changes) <= SELF_SERVICE_FIELDS):
        _require_manageable(principal, Role(user.role), current_tenants)
    role = data.role or Role(user.role)
    if "role" in changes or "tenants" in changes:
        slugs = data.tenants if data.tenants is not None else _slugs(session, current_tenants)
        tenants = _resolve_tenants(session, principal, role, slugs)
        _require_manageable(principal, role, {t.id for t in tenants})
        _guard_last_admin(session, user, demoted=role != Role.INFRA_ADMIN)
        user.role = role.value
        _set_memberships(session, user, tenants)
    if data.is_active is False:
        _guard_last_admin(session, user, demoted=True)
        if user.is_active:  # deactivating ends the user's console sessions and revokes their tokens at once
            sessions.end_everything(session, principal, user)
    if data.password is not None:
        user.password_hash = hash_password(data.password.get_secret_value())
    user.sqlmodel_update({k: v for k, v in changes.items() if k in {"full_name", "email", "is_active"}})
    session.add(user)
    session.flush()
    audit.record(session, principal, "update", "user", user.id, detail={"fields": sorted(changes)})
    return user


def _slugs(session: Session, tenant_ids: set[int]) -> list[str]:
    return list(session.exec(select(Tenant.slug).where(col(Tenant.id).in_(sorted(tenant_ids)))).all())


def delete_user(session: Session, principal: Principal, user_id: int) -> None:
    """Delete a user and their tokens and memberships."""
    user = get_user(session, principal, user_id)
    _require_manageable(principal, Role(user.role), _user_tenant_ids(session, user.id))
    _guard_last_admin(session, user, demoted=True)
    audit.record(session, principal, "delete", "user", user.id, detail={"username": user.username})
    session.delete(user)
    session.flush()


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this username and password, or None (same cost either way). A
    hash made with older argon2 parameters is replaced by one with the current ones."""
    user = session.exec(select(User).where(User.username == username)).first()
    ok = verify_password(user.password_hash if user else None, password)
    if not (ok and user is not None and user.is_active):
        return None
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        session.add(user)
    return user
