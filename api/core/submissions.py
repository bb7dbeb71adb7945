"""How every submission of a tenant opens (a job or a study): the tenant's row is locked for
the transaction, and a request that repeats an earlier one's Idempotency-Key gets what the
earlier one made."""

import hashlib
import json
from typing import Any, TypeVar

from sqlalchemy import text, update
from sqlmodel import Session, col, select

from api.core.db import is_postgresql
from api.core.models import Job, Study, Tenant
from api.web.errors import IdempotencyConflict

# What a POST with an Idempotency-Key makes.
Replayable = TypeVar("Replayable", Job, Study)
# The first key of the tenants' advisory locks: no other advisory lock of Tunelab's uses it.
TENANT_LOCKS = 7_301
LOCK_TENANT = text("SELECT pg_advisory_xact_lock(:space, hashtext(:tenant_id))")


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Holds the tenant's lock until the transaction ends, so that one tenant's submissions
    count and insert one at a time.

    On PostgreSQL a transaction-scoped advisory lock keyed by the tenant's id: it lives in
    memory only, where locking the tenant's row would write a new row version and its WAL
    at every submission. On SQLite (no row locks, no advisory locks) a no-op update of the
    tenant's row takes the database's write lock, which serialises writers just the same."""
    if is_postgresql(session):
        session.execute(LOCK_TENANT, {"space": TENANT_LOCKS, "tenant_id": tenant_id})
        return
    session.execute(
        update(Tenant)
        .where(col(Tenant.id) == tenant_id)
        .values(name=col(Tenant.name))
        .execution_options(synchronize_session=False)
    )


def find_replay(
    session: Session, table: type[Replayable], tenant_id: str, key: str, body_hash: str
) -> Replayable | None:
    """The job (or study) an earlier request with this Idempotency-Key made, if any."""
    row = session.exec(
        select(table).where(table.tenant_id == tenant_id, table.idempotency_key == key)
    ).first()
    if row is not None and row.request_hash != body_hash:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different body; use a new key for a new request"
        )
    return row


def open_submission(
    session: Session,
    table: type[Replayable],
    tenant_id: str,
    idempotency_key: str | None,
    body_hash: str,
) -> Replayable | None:
    """Locks the tenant's row, then looks for the replayed request's job or study. Found: the
    transaction ends (and the lock with it) and it is returned. None: a new submission, to be
    made under the lock, in the transaction this opened."""
    lock_tenant(session, tenant_id)
    if idempotency_key is None:
        return None
    replayed = find_replay(session, table, tenant_id, idempotency_key, body_hash)
    if replayed is not None:
        # Ends the transaction (and the lock) without expiring what was read.
        session.commit()
    return replayed
