"""Alembic migrations on the backend `--db` chose (SQLite, or a real PostgreSQL server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool

from store.db import alembic_config, upgrade_db
from store.models import Base
from tests.postgres import PostgresServer

pytestmark = pytest.mark.unit


@pytest.fixture
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.config.getoption("--db") == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database(migrated=False)
        yield url
        server.drop_database(url)
    else:
        yield f"sqlite:///{tmp_path / 'empty.db'}"


def schema_diff(url: str) -> list[object]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_build_the_models_schema_and_go_back(empty_db_url: str) -> None:
    """What `avatar up` runs at every start: from nothing to the models' exact schema, twice,
    and every downgrade works on this backend."""
    upgrade_db(empty_db_url)
    upgrade_db(empty_db_url)  # at every start: a no-op the second time
    assert schema_diff(empty_db_url) == []
    assert {"sessions", "usage_records", "daily_usage", "webhook_events"} <= tables(empty_db_url)
    command.downgrade(alembic_config(empty_db_url), "base")
    assert tables(empty_db_url) == {"alembic_version"}
    upgrade_db(empty_db_url)
    assert schema_diff(empty_db_url) == []
