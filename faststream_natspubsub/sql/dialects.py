"""What differs between PostgreSQL and SQLite: the clock, conflict-ignoring inserts, locks."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = (
    "Dialect",
    "advisory_lock",
    "db_epoch",
    "dialect_of",
    "insert_ignoring_conflicts",
    "use_sqlite_wal",
)

Dialect = Literal["postgresql", "sqlite"]
SUPPORTED: Final = ("postgresql", "sqlite")
# Julian day of 1970-01-01T00:00:00Z: SQLite's julianday('now') minus it, in seconds.
_UNIX_EPOCH_JULIAN: Final = 2440587.5


def dialect_of(engine: AsyncEngine) -> Dialect:
    """``postgresql`` or ``sqlite``; anything else is refused with a clear message."""
    name = engine.dialect.name
    if name == "postgresql":
        return "postgresql"
    if name == "sqlite":
        return "sqlite"
    raise ValueError(
        f"the SQL outbox and inbox support {', '.join(SUPPORTED)}; this engine is {name!r}"
    )


def use_sqlite_wal(engine: AsyncEngine, *, busy_timeout: float = 5.0) -> None:
    """Open every SQLite connection of ``engine`` in WAL mode with ``synchronous=NORMAL``.

    Recommended for the outbox and the SQL inbox on SQLite: readers no longer wait for the
    writer, and a commit appends to the log instead of syncing the database file (a power
    loss may lose the last commits, never corrupt the file). ``journal_mode`` persists in
    the file. A no-op for other databases.
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        finally:
            cursor.close()


def db_epoch(dialect: Dialect) -> sa.ColumnElement[float]:
    """The database's current time in seconds since the epoch (leases use one clock for
    every relay, whatever host it runs on)."""
    if dialect == "postgresql":
        # clock_timestamp(), not now(): now() is frozen at the start of the transaction.
        return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float(53))
    return (sa.func.julianday("now") - _UNIX_EPOCH_JULIAN) * 86400.0


def insert_ignoring_conflicts(table: sa.Table, dialect: Dialect) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` into ``table``."""
    module: Any = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()


def advisory_lock(table: sa.Table, scope: str) -> sa.Select[Any]:
    """PostgreSQL: a transaction-scoped advisory lock on (table, scope), held until commit.

    Claims of one stream's rows take it, so two relays never claim windows at the same time
    and windows go out one after the other, in id order.
    """
    digest = hashlib.blake2b(f"{table.fullname}/{scope}".encode(), digest_size=8).digest()
    key = int.from_bytes(digest, "big", signed=True)
    return sa.select(sa.func.pg_advisory_xact_lock(key))
