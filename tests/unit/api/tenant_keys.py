"""Tenants' API keys, made straight in the database of the API under test."""

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session

from api.auth.keys import create_key


@dataclass
class TenantKeys:
    engine: Engine

    def headers(self, tenant: str = "acme") -> dict[str, str]:
        with Session(self.engine) as session:
            _, key = create_key(session, tenant)
        return {"Authorization": f"Bearer {key}"}
