"""`tunelab keys`: a tenant's API keys, created (the tenant too, if new), listed by prefix and
revoked, straight in the database."""

import sys

import typer

from cli.settings import load_settings

keys_app = typer.Typer(help="tenant API keys", no_args_is_help=True)


def new_key(database_url: str, tenant_name: str) -> tuple[str, str, str]:
    """(tenant name, tenant id, plaintext key) for a new key; the tenant is made if new."""
    from sqlmodel import Session

    from api.auth.keys import create_key
    from api.core.db import make_engine

    with Session(make_engine(database_url)) as session:
        tenant, key = create_key(session, tenant_name)
        return tenant.name, tenant.id, key


@keys_app.command("create")
def keys_create(tenant: str) -> None:
    """Create a key (and the tenant if new)."""
    name, tenant_id, key = new_key(load_settings().database_url, tenant)
    print(f"tenant {name} ({tenant_id}); this key is shown once:")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """List keys by prefix."""
    from sqlmodel import Session

    from api.auth.keys import list_keys
    from api.core.db import make_engine

    with Session(make_engine(load_settings().database_url)) as session:
        for key, tenant in list_keys(session):
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            print(f"{key.prefix}  {tenant.name:20}  created {key.created_at:%Y-%m-%d}  {state}")


@keys_app.command("revoke")
def keys_revoke(prefix: str) -> None:
    """Revoke a key by its prefix."""
    from sqlmodel import Session

    from api.auth.keys import revoke_key
    from api.core.db import make_engine

    with Session(make_engine(load_settings().database_url)) as session:
        if not revoke_key(session, prefix):
            print(f"no key with prefix {prefix}", file=sys.stderr)
            raise typer.Exit(1)
    print(f"key {prefix} revoked")
