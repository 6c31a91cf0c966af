"""Audit fixtures: the same store tests run on SQLite and on the real PostgreSQL.

PostgreSQL tests each get a private schema (through the connection's search_path), so
parallel runs and other engineers' tests never see each other's rows.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from scrapvision.audit.routes import qa_router, router
from scrapvision.audit.settings import AuditSettings
from scrapvision.audit.store import AuditStore
from scrapvision.records import DecisionRecord
from scrapvision.service.auth import KeyRing

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_unreachable_reason() -> str | None:
    try:
        import psycopg

        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                        connect_timeout=2).close()
    except Exception as error:  # noqa: BLE001 - any failure means: skip with the reason
        return f"PostgreSQL at 127.0.0.1:5432 (db test, user postgres) unreachable: {error}"
    return None


_PG_SKIP = _postgres_unreachable_reason()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL for an empty audit store: SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    if _PG_SKIP:
        pytest.skip(_PG_SKIP)
    schema = f"audit_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def audit_settings(audit_url: str, tmp_path: Path) -> AuditSettings:
    return AuditSettings(url=audit_url, frames_dir=tmp_path / "frames")


@pytest.fixture
def store(audit_settings: AuditSettings) -> Iterator[AuditStore]:
    """A started store; closed (flushed) at the end of the test."""
    audit_store = AuditStore(audit_settings).start()
    yield audit_store
    audit_store.close()


@pytest.fixture
def make_decision() -> Callable[..., DecisionRecord]:
    """Factory of plausible decisions; keyword arguments override any field."""
    counter = iter(range(1_000_000))

    def make(**fields) -> DecisionRecord:
        number = next(counter)
        values = dict(time=fields.pop("time", time.time()), line="line1",
                      frame_id=f"frame-{number}", model_name="tiny", model_version="v1",
                      action="eject", in_time=True, latency_ms=4.0, class_name="red",
                      confidence=0.95, margin=0.9, bin="bin-red",
                      top_k=[("red", 0.95), ("green", 0.05)])
        values.update(fields)
        return DecisionRecord(**values)

    return make


def build_app(audit_store: AuditStore, keys: list | None = None) -> FastAPI:
    """A small app with just the audit routers, standing in for the service's app factory."""
    app = FastAPI()
    app.state.audit = audit_store
    app.state.keyring = KeyRing(keys or [])
    app.include_router(router)
    app.include_router(qa_router)
    return app


@pytest.fixture
def client(store: AuditStore) -> Iterator[TestClient]:
    """An open (no API keys) test client over the audit routers and `store`."""
    with TestClient(build_app(store)) as test_client:
        yield test_client
