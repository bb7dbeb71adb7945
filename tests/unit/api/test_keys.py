from sqlmodel import Session, select

from api.auth.keys import create_key, hash_key, list_keys, revoke_key, tenant_for_key
from api.core.models import ApiKey


class TestKeys:
    def test_a_key_is_stored_only_as_its_hash(self, engine):
        with Session(engine) as session:
            _, key = create_key(session, "acme")
            stored = session.exec(select(ApiKey)).one()
        assert key not in (stored.key_hash, stored.prefix)
        assert stored.key_hash == hash_key(key)

    def test_the_key_finds_its_tenant(self, engine):
        with Session(engine) as session:
            tenant, key = create_key(session, "acme")
            assert tenant_for_key(session, key).id == tenant.id

    def test_a_second_key_joins_the_same_tenant(self, engine):
        with Session(engine) as session:
            first, _ = create_key(session, "acme")
            second, _ = create_key(session, "acme")
            assert first.id == second.id
            assert len(list_keys(session)) == 2

    def test_a_revoked_key_is_refused(self, engine, client):
        with Session(engine) as session:
            _, key = create_key(session, "acme")
            headers = {"Authorization": f"Bearer {key}"}
            assert client.get("/v1/jobs", headers=headers).status_code == 200
            assert revoke_key(session, key.split("_")[1])
        assert client.get("/v1/jobs", headers=headers).status_code == 401

    def test_a_tampered_key_is_refused(self, engine):
        with Session(engine) as session:
            _, key = create_key(session, "acme")
            assert tenant_for_key(session, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
