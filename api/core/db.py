"""The database engine: PostgreSQL in production, SQLite embedded."""

from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine


def make_engine(database_url: str) -> Engine:
    if not database_url.startswith("sqlite"):
        return create_engine(database_url, pool_pre_ping=True)
    in_memory = database_url in ("sqlite://", "sqlite:///:memory:")
    engine = create_engine(
        database_url,
        connect_args={"check_same_thread": False, "timeout": 30},
        # One shared connection keeps an in-memory database alive across sessions.
        poolclass=StaticPool if in_memory else None,
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if not in_memory:
            # Readers do not wait for the writer, and writers wait rather than fail.
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
