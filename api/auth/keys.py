"""Tenant API keys: random, shown once, stored as a SHA-256 hash, compared in constant time.

A key reads `tlk_<prefix>_<secret>`. The prefix finds the row; the secret carries
192 random bits, so a fast hash is enough (nothing to brute-force).
"""

import hashlib
import hmac
import secrets

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from api.core.models import ApiKey, Tenant, utcnow

KEY_SCHEME = "tlk"
# Every authenticated request runs it: built once, so that its cache key is computed once
# rather than at each request (about half of what the lookup costs the API otherwise).
KEY_AND_TENANT = select(ApiKey, Tenant).where(
    ApiKey.prefix == bindparam("prefix"), ApiKey.tenant_id == Tenant.id
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant_name: str) -> tuple[Tenant, str]:
    """Creates the tenant if it is new; returns it and a new plaintext key (shown once)."""
    tenant = session.exec(select(Tenant).where(Tenant.name == tenant_name)).first()
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    prefix = secrets.token_hex(4)
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(24)}"
    session.add(ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=hash_key(key)))
    session.commit()
    session.refresh(tenant)
    return tenant, key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME:
        return None
    found = session.exec(KEY_AND_TENANT, params={"prefix": parts[1]}).first()
    if found is None:
        return None
    row, tenant = found
    if row.revoked_at is not None or not hmac.compare_digest(row.key_hash, hash_key(key)):
        return None
    return tenant


def list_keys(session: Session) -> list[tuple[ApiKey, Tenant]]:
    rows = session.exec(
        select(ApiKey, Tenant).where(ApiKey.tenant_id == Tenant.id).order_by(col(ApiKey.created_at))
    )
    return [(key, tenant) for key, tenant in rows]


def revoke_key(session: Session, prefix: str) -> bool:
    row = session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first()
    if row is None:
        return False
    row.revoked_at = row.revoked_at or utcnow()
    session.add(row)
    session.commit()
    return True
