"""Tables owned by Kiln's shell: tenants, users, memberships, API tokens and the audit log.

The schema itself is owned by the Alembic migrations in `kiln/migrations/versions`; a test
checks that these models and the migrations agree on every database Kiln supports.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from kiln.db import UTCDateTime, utcnow


class Tenant(SQLModel, table=True):
    """A customer of the fleet (an OpenNebula group): owns leases, usage and bills."""

    __tablename__ = "tenant"

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=63, unique=True)
    name: str = Field(max_length=200)
    cost_centre: str | None = Field(default=None, max_length=64)
    description: str = Field(default="", max_length=2000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class User(SQLModel, table=True):
    """A local user. Global roles (infra-admin, finance) have no memberships; tenant roles have one or more."""

    __tablename__ = "user_account"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=64, unique=True)
    full_name: str = Field(default="", max_length=200)
    email: str | None = Field(default=None, max_length=254)
    role: str = Field(max_length=32)
    password_hash: str | None = Field(default=None, max_length=255)
    is_active: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Membership(SQLModel, table=True):
    """A user's membership of a tenant (the user's role applies within it)."""

    __tablename__ = "membership"

    user_id: int = Field(
        sa_column=Column(Integer, ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True)
    )
    tenant_id: int = Field(
        sa_column=Column(Integer, ForeignKey("tenant.id", ondelete="RESTRICT"), primary_key=True, index=True)
    )


class ApiToken(SQLModel, table=True):
    """A personal API token. Only its SHA-256 is stored; the token is shown once at creation."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(sa_column=Column(Integer, ForeignKey("user_account.id", ondelete="CASCADE"), nullable=False, index=True))
    name: str = Field(default="", max_length=100)
    prefix: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_used_from: str | None = Field(default=None, max_length=64)  # the client address of that use
    scope: str = Field(default="write", max_length=8)  # read: GET/HEAD/OPTIONS only; write: everything the user may
    tenant_id: int | None = Field(default=None, sa_column=Column(
        Integer, ForeignKey("tenant.id", ondelete="CASCADE"), nullable=True))  # limited to this one of the user's tenants


class SigninFailure(SQLModel, table=True):
    """Failed password sign-ins counted per username or per client address (`kind`), shared by
    every replica through the database; `locked_until` set when the count reached its limit."""

    __tablename__ = "signin_failure"
    __table_args__ = (UniqueConstraint("kind", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=8)  # user | address
    key: str = Field(max_length=64)  # the username as typed (lower-cased), or the address
    failures: int = Field(default=0)
    last_failed_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AuditEvent(SQLModel, table=True):
    """Append-only record of who did what to which object, when and from where."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=64)
    object_type: str = Field(max_length=64)
    object_id: str = Field(max_length=64)
    tenant_id: int | None = Field(default=None, index=True)
    source: str = Field(default="", max_length=64)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ConsoleSessionRecord(SQLModel, table=True):
    """A console sign-in (its cookie carries the `sid`): listed to its user, ended by them, by
    sign-out or by an infra admin; the console refuses a session without a live record."""

    __tablename__ = "console_session"

    sid: str = Field(max_length=64, primary_key=True)
    username: str = Field(max_length=64, index=True)
    user_id: int | None = Field(default=None, sa_column=Column(
        Integer, ForeignKey("user_account.id", ondelete="CASCADE"), nullable=True, index=True))  # None: OIDC
    kind: str = Field(max_length=8)  # local | oidc
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    created_from: str = Field(default="", max_length=64)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    last_seen_from: str = Field(default="", max_length=64)
    user_agent: str = Field(default="", max_length=200)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ended_by: str | None = Field(default=None, max_length=64)
