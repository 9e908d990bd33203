"""``SqlInboxStore``: processed marks in the handler's own database transaction.

Per delivery (or batch) one transaction: ``INSERT ... ON CONFLICT DO NOTHING`` of the mark
first, then the handler writes through the same session (``InboxSession``), then one commit.

- A mark that exists already: the event was processed, the delivery is acknowledged.
- Two copies at once (any processes): PostgreSQL makes the second insert wait on the
  unique key until the first transaction ends; if it committed, the second sees a conflict
  and runs nothing; if it rolled back (the handler failed, the process died), the second
  goes on. SQLite has one writer: the second waits for the first to finish.
- A crash before the commit leaves neither the mark nor the handler's writes.

On SQLite the transaction holds the database's write lock while the handler runs: write
through the ``InboxSession`` only (another connection writing to the same file would wait
for the lock this transaction holds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..inbox import DEFAULT_INBOX_TTL
from ._require import require_sql_extra
from .dialects import dialect_of, insert_ignoring_conflicts
from .schema import DEFAULT_PREFIX, inbox_table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..transactional import InboxKey

__all__ = ("SqlInboxStore", "SqlInboxTransaction")

logger = logging.getLogger("faststream_natspubsub.sql.inbox")

# Marks deleted per statement (bind parameters stay far below every driver's limit).
_CHUNK: Final = 1000
# Seconds between two purges of marks older than the TTL (run in the background).
DEFAULT_PURGE_INTERVAL: Final = 3600.0


class SqlInboxStore:
    """An inbox in your database: ``NatsPubsub(..., inbox=SqlInboxStore(engine))``.

    ``session_factory`` makes the handler's sessions (default: an ``async_sessionmaker``
    on ``engine`` with ``expire_on_commit=False``). Marks older than ``ttl`` seconds are
    deleted in the background every ``purge_interval`` seconds.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: float = DEFAULT_INBOX_TTL,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
        purge_interval: float = DEFAULT_PURGE_INTERVAL,
    ) -> None:
        require_sql_extra("SqlInboxStore")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.engine = engine
        self.dialect = dialect_of(engine)
        self.metadata = sa.MetaData()
        self.table = inbox_table(self.metadata, prefix)
        self.ttl = ttl
        self.purge_interval = purge_interval
        self._sessions = session_factory or async_sessionmaker(engine, expire_on_commit=False)
        # PostgreSQL: one statement whatever the batch's size, its keys bound as three arrays
        # (see _claim); SQLite: an executemany of the row insert.
        self._insert = (
            _insert_from_arrays(self.table)
            if self.dialect == "postgresql"
            else insert_ignoring_conflicts(self.table, self.dialect).returning(
                self.table.c.consumer, self.table.c.topic, self.table.c.event_id
            )
        )
        self._next_purge = time.monotonic() + purge_interval
        self._purging: asyncio.Task[int] | None = None

    async def create_tables(self) -> None:
        """Create the inbox table (and its index) if they do not exist."""
        async with self.engine.begin() as connection:
            await connection.run_sync(self.metadata.create_all)

    def begin(self) -> SqlInboxTransaction:
        """A transaction for one delivery or batch (see the module docstring)."""
        if time.monotonic() >= self._next_purge:
            self._start_purge()
        return SqlInboxTransaction(self, self._sessions())

    async def is_processed(self, key: InboxKey) -> bool:
        """Whether ``key``'s mark is committed."""
        c = self.table.c
        query = sa.select(sa.func.count()).where(
            c.consumer == key.consumer, c.topic == key.topic, c.event_id == key.event_id
        )
        async with self.engine.connect() as connection:
            return bool((await connection.execute(query)).scalar_one())

    async def purge(self, *, older_than: float | None = None) -> int:
        """Delete marks older than ``older_than`` seconds (default: the TTL); returns how many."""
        cutoff = datetime.now(timezone.utc) - timedelta(
            seconds=self.ttl if older_than is None else older_than
        )
        async with self.engine.begin() as connection:
            result = await connection.execute(
                sa.delete(self.table).where(self.table.c.processed_at < cutoff)
            )
        return int(result.rowcount or 0)

    def _start_purge(self) -> None:
        self._next_purge = time.monotonic() + self.purge_interval
        if self._purging is None or self._purging.done():
            self._purging = asyncio.get_running_loop().create_task(self._purge_quietly())

    async def _purge_quietly(self) -> int:
        try:
            return await self.purge()
        except Exception:
            logger.warning("could not purge old inbox marks", exc_info=True)
            return 0

    async def _claim(self, session: AsyncSession, keys: Sequence[InboxKey]) -> list[bool]:
        unique = list(dict.fromkeys(keys))
        now = datetime.now(timezone.utc)
        connection = await session.connection()
        if self.dialect == "postgresql":
            # One execution of one prepared statement per batch: asyncpg sends the keys as
            # three array parameters. An executemany would have SQLAlchemy build a parameter
            # set per row and render a VALUES list of 4 parameters per row (its client-side
            # cost was most of a batch's claim), with a new statement text for each size.
            params: Any = {
                "b_consumer": [k.consumer for k in unique],
                "b_topic": [k.topic for k in unique],
                "b_event_id": [k.event_id for k in unique],
                "b_at": now,
            }
        else:
            # An executemany: SQLAlchemy sends it as multi-row INSERTs from one cached
            # statement (a .values(list) would be compiled every time).
            params = [
                {"consumer": k.consumer, "topic": k.topic, "event_id": k.event_id}
                | {"processed_at": now}
                for k in unique
            ]
        result = await connection.execute(self._insert, params)
        inserted = {(r[0], r[1], r[2]) for r in result.all()}
        outcomes: list[bool] = []
        for key in keys:  # a second copy of one event in one batch is a duplicate
            as_tuple = (key.consumer, key.topic, key.event_id)
            outcomes.append(as_tuple in inserted)
            inserted.discard(as_tuple)
        return outcomes

    async def _unclaim(self, session: AsyncSession, keys: Sequence[InboxKey]) -> None:
        c = self.table.c
        for start in range(0, len(keys), _CHUNK):
            chunk = [(k.consumer, k.topic, k.event_id) for k in keys[start : start + _CHUNK]]
            await session.execute(
                sa.delete(self.table).where(sa.tuple_(c.consumer, c.topic, c.event_id).in_(chunk))
            )


class SqlInboxTransaction:
    """One transaction of :class:`SqlInboxStore`; ``session`` is the handler's ``InboxSession``."""

    __slots__ = ("_store", "session")

    def __init__(self, store: SqlInboxStore, session: AsyncSession) -> None:
        self._store = store
        self.session = session

    async def claim(self, keys: Sequence[InboxKey]) -> list[bool]:
        """Insert the marks; ``True`` for each key this transaction inserted."""
        return await self._store._claim(self.session, keys)

    async def unclaim(self, keys: Sequence[InboxKey]) -> None:
        """Delete marks this transaction inserted."""
        await self._store._unclaim(self.session, keys)

    async def commit(self) -> None:
        """Commit the marks with the handler's writes."""
        await self.session.commit()

    async def rollback(self) -> None:
        """Roll back what is not committed and close the session; never raises."""
        try:
            await self.session.close()
        except Exception:  # a broken connection: the server rolls back on its own
            logger.warning("could not close an inbox session", exc_info=True)


def _insert_from_arrays(table: sa.Table) -> Any:
    """PostgreSQL: ``INSERT ... SELECT FROM unnest(:consumers, :topics, :event_ids) ON CONFLICT
    DO NOTHING RETURNING`` the keys it inserted; the same text (one prepared statement) for
    every batch size.

    Conflicts behave as the row insert's: a key another open transaction inserted waits for
    that transaction, a committed one is skipped, and a key given twice is inserted once.
    """
    text_array = postgresql.ARRAY(sa.String())
    keys = (
        sa.func.unnest(
            sa.bindparam("b_consumer", type_=text_array),
            sa.bindparam("b_topic", type_=text_array),
            sa.bindparam("b_event_id", type_=text_array),
        )
        .table_valued("consumer", "topic", "event_id")
        .render_derived(name="keys")
    )
    rows = sa.select(
        keys.c.consumer,
        keys.c.topic,
        keys.c.event_id,
        sa.bindparam("b_at", type_=table.c.processed_at.type),
    )
    c = table.c
    return (
        postgresql.insert(table)
        .from_select(["consumer", "topic", "event_id", "processed_at"], rows)
        .on_conflict_do_nothing()
        .returning(c.consumer, c.topic, c.event_id)
    )
