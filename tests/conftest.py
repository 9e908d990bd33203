"""Shared fixtures: a real nats-server per test; real databases for the SQL tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqldb import DIALECTS, Database, PostgresServer, new_database

from faststream_natspubsub.testing import EmbeddedNatsServer

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedNatsServer]:
    """A throw-away ``nats-server -js`` for one test."""
    async with EmbeddedNatsServer() as embedded:
        yield embedded


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session, started on first use."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=DIALECTS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A fresh database of each kind: a SQLite file, then a PostgreSQL schema."""
    dialect = request.param
    pg = request.getfixturevalue("postgres") if dialect == "postgresql" else None
    return await new_database(dialect, tmp_path, pg)


@pytest.fixture
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    """An engine on the test's fresh database, disposed after the test."""
    created = database.engine()
    try:
        yield created
    finally:
        await created.dispose()
