"""The machine's PostgreSQL and Redis, shared safely: a fresh database and a queue name of
one's own, removed afterwards. Used by the integration and fault tests and the benchmarks."""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import redis

POSTGRES_ADMIN = os.environ.get(
    "TUNELAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TUNELAB_TEST_REDIS", "redis://127.0.0.1:6379/0")


@contextmanager
def fresh_database(admin_url: str, prefix: str) -> Iterator[str]:
    """An empty database, as a SQLAlchemy URL, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def psycopg_url(database_url: str) -> str:
    """The address psycopg connects to for a SQLAlchemy URL such as fresh_database's."""
    return database_url.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def fresh_queue(redis_url: str, prefix: str) -> Iterator[str]:
    """A queue name no one else uses; its keys (messages left queued included) go after."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5)
    try:
        client.ping()
        queue = f"{prefix}-{secrets.token_hex(4)}"
        try:
            yield queue
        finally:
            for key in client.scan_iter(f"*{queue}*"):
                client.delete(key)
    finally:
        client.close()
