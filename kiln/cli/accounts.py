"""`kiln tenants`, `kiln users`, `kiln tokens`: manage identities from the appliance itself.

The CLI talks to the database directly and acts as the local operator (infra-admin); every
change is in the audit log as `cli:<os user>`.
"""

from __future__ import annotations

import sys
from enum import Enum

import typer

from kiln.auth import Principal
from kiln.cli.common import OutputFormat, OutputOption, db_session, print_rows, settings
from kiln.errors import BadRequest
from kiln.roles import Role
from kiln.validation import parse_model

# Each command imports the services it uses, so that a list command loads only its own.

tenants_app = typer.Typer(help="Create and list tenants.", no_args_is_help=True)
users_app = typer.Typer(help="Create, list, delete and unlock local users; end their sessions.", no_args_is_help=True)
tokens_app = typer.Typer(help="Create, list and revoke personal API tokens.", no_args_is_help=True)


@tenants_app.command("create")
def tenants_create(
    slug: str = typer.Argument(..., help="Short permanent id: lower-case letters, digits, hyphens."),
    name: str = typer.Option(None, help="Display name (default: the slug)."),
    cost_centre: str = typer.Option(None, "--cost-centre", help="Finance cost centre for chargeback."),
) -> None:
    """Create a tenant."""
    from kiln.tenants import TenantCreate, create_tenant

    data = parse_model(TenantCreate, {"slug": slug, "name": name, "cost_centre": cost_centre})
    with db_session() as session:
        tenant = create_tenant(session, Principal.system(), data)
    typer.echo(f"created tenant {tenant.slug} (id {tenant.id})")


@tenants_app.command("list")
def tenants_list(output: OutputFormat = OutputOption) -> None:
    """List tenants."""
    from kiln.tenants import TenantPublic, list_tenants

    with db_session() as session:
        rows = [TenantPublic.model_validate(t.model_dump()) for t in list_tenants(session, Principal.system())]
    print_rows(rows, ["id", "slug", "name", "cost_centre", "created_at"], output, "Tenants")


@tenants_app.command("delete")
def tenants_delete(slug: str = typer.Argument(..., help="The tenant's slug.")) -> None:
    """Delete a tenant that has no members."""
    from kiln.tenants import delete_tenant, tenants_by_slug

    with db_session() as session:
        (tenant,) = tenants_by_slug(session, [slug])
        delete_tenant(session, Principal.system(), tenant.id)
    typer.echo(f"deleted tenant {slug}")


@users_app.command("create")
def users_create(
    username: str = typer.Argument(..., help="Login name."),
    role: Role = typer.Option(..., help="infra-admin, finance, tenant-admin or tenant-member."),
    tenant: list[str] = typer.Option([], "--tenant", help="Tenant slug (repeat for several); tenant roles only."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    full_name: str = typer.Option("", help="Display name."),
    email: str = typer.Option(None, help="E-mail address."),
) -> None:
    """Create a user (without --password-stdin the user signs in with tokens only)."""
    from kiln.users import UserCreate, create_user

    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise BadRequest("--password-stdin was given but standard input held no password")
    fields = {"username": username, "role": role, "tenants": tenant, "password": password}
    data = parse_model(UserCreate, {**fields, "full_name": full_name, "email": email})
    with db_session() as session:
        user = create_user(session, Principal.system(), data)
    typer.echo(f"created user {user.username} ({user.role})")


@users_app.command("list")
def users_list(output: OutputFormat = OutputOption) -> None:
    """List users with their roles and tenants."""
    from kiln.users import list_users, to_public

    with db_session() as session:
        principal = Principal.system()
        rows = to_public(session, principal, list_users(session, principal))
    print_rows(rows, ["id", "username", "role", "tenants", "full_name", "is_active"], output, "Users")


@users_app.command("delete")
def users_delete(username: str = typer.Argument(..., help="Login name.")) -> None:
    """Delete a user and their tokens."""
    from kiln.users import delete_user, get_user_by_username

    with db_session() as session:
        user = get_user_by_username(session, username)
        delete_user(session, Principal.system(), user.id)
    typer.echo(f"deleted user {username}")


@users_app.command("unlock")
def users_unlock(username: str = typer.Argument(..., help="Login name.")) -> None:
    """Lift a sign-in lock (too many failed passwords) and forget the user's failures."""
    from kiln import audit
    from kiln.throttle import clear_user

    with db_session() as session:
        removed = clear_user(session, username)
        if removed:
            audit.record(session, Principal.system(), "unlock", "signin", username.strip().lower())
    typer.echo(f"unlocked {username}" if removed else f"{username} had no failed sign-ins to forget")


@users_app.command("end-sessions")
def users_end_sessions(username: str = typer.Argument(..., help="Login name.")) -> None:
    """End all of a user's console sessions and revoke all their API tokens (e.g. when they leave)."""
    from kiln.sessions import end_everything
    from kiln.users import get_user_by_username

    with db_session() as session:
        ended, revoked = end_everything(session, Principal.system(), get_user_by_username(session, username))
    typer.echo(f"ended {ended} console sessions and revoked {revoked} API tokens of {username}")


class TokenScope(str, Enum):
    """What a token may do."""

    read = "read"
    write = "write"


@tokens_app.command("create")
def tokens_create(
    username: str = typer.Argument(..., help="Whose token."),
    expires_in: int = typer.Option(None, "--expires-in", min=1, max=3650, help="Days until it expires."),
    name: str = typer.Option("cli", help="What the token is for."),
    scope: TokenScope = typer.Option(TokenScope.write, help="read: GET requests only; write: all the user's rights."),
    tenant: str = typer.Option(None, "--tenant", help="Limit the token to this one of the user's tenants."),
) -> None:
    """Create an API token and print it alone on stdout (it is not shown again)."""
    from kiln.tokens import issue_token
    from kiln.users import get_user_by_username

    days = expires_in or settings().token_default_days
    with db_session() as session:
        user = get_user_by_username(session, username)
        created = issue_token(session, Principal.system(), user, name=name, days=days, scope=scope.value, tenant=tenant)
    typer.echo(created.token)


@tokens_app.command("list")
def tokens_list(
    username: str = typer.Option(None, "--user", help="Only this user's tokens."),
    output: OutputFormat = OutputOption,
) -> None:
    """List tokens (never the tokens themselves)."""
    from kiln.tokens import list_tokens

    with db_session() as session:
        rows = list_tokens(session, Principal.system(), username)
    print_rows(rows, ["id", "username", "name", "prefix", "scope", "tenant", "expires_at", "revoked_at", "last_used_at",
                      "last_used_from"], output, "Tokens")


@tokens_app.command("revoke")
def tokens_revoke(token: str = typer.Argument(..., help="Token id or prefix (as `kiln tokens list` shows), or the token itself.")) -> None:
    """Revoke a token; requests with it are refused from now on."""
    from kiln.tokens import find_token_id, revoke_token

    with db_session() as session:
        revoked = revoke_token(session, Principal.system(), find_token_id(session, token))
    typer.echo(f"revoked token {revoked.id} ({revoked.prefix}…) of {revoked.username}")
