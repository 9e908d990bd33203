"""Shared fixtures: one nats-server for the session, private ones for tests that stop it, and
real databases (a SQLite file, a PostgreSQL server for the session) for the SQL tests.

Starting a server per test cost most of the live tests' time. ``server`` is one JetStream
server shared by the whole session; before each test every stream (and so every consumer and
KV bucket) on it is deleted, so tests that reuse names (``env="test", app="orders"``) never
see each other's events. A test that stops, kills or restarts its server, or needs its own
configuration, takes ``own_server``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import pytest
from sqldb import DIALECTS, Database, PostgresServer, new_database

from faststream_natspubsub.testing import EmbeddedNatsServer

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


class _SessionLoop:
    """An event loop in a thread of its own: the shared server's process belongs to it,
    while every test runs in its own loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="session")
def shared_server() -> Iterator[EmbeddedNatsServer]:
    """One ``nats-server -js`` for the whole session (use ``server`` in tests)."""
    session = _SessionLoop()
    embedded = EmbeddedNatsServer()
    session.run(embedded.start())
    try:
        yield embedded
    finally:
        session.run(embedded.stop())
        session.close()


@pytest.fixture
async def server(shared_server: EmbeddedNatsServer) -> EmbeddedNatsServer:
    """The session's server, emptied of every stream before the test."""
    await _delete_every_stream(shared_server.url)
    return shared_server


@pytest.fixture
async def own_server() -> AsyncIterator[EmbeddedNatsServer]:
    """A throw-away ``nats-server -js`` for one test that stops, kills or restarts it."""
    async with EmbeddedNatsServer() as embedded:
        yield embedded


async def _delete_every_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        jsm = nc.jsm()
        for name in await jsm.streams_info():
            await jsm.delete_stream(name.config.name)
    finally:
        await nc.close()


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
