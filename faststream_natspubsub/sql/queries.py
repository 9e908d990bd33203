"""Every statement on the outbox table: the relay's claim and settle, status and repairs.

Claiming (see docs/concepts/outbox.md for why):

- a claim is a lease: ``lease_owner`` and ``available_at`` (database clock) are set on the
  claimed rows in one short transaction, which commits before anything is published, so no
  lock is held while NATS answers;
- a relay claims only when no other relay holds an unexpired lease on the same stream's
  rows, so windows go out one after the other, in id order (PostgreSQL serializes the claims
  with an advisory lock; SQLite has a single writer);
- the rows of a relay that died become claimable when their lease runs out: nothing is
  stranded, and the re-publish carries the same ``Nats-Msg-Id``, so JetStream stores the
  event once (the lease must stay well inside the stream's duplicate window).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from .dialects import Dialect, advisory_lock, db_epoch
from .schema import FAILED, PENDING, PUBLISHED

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ("ClaimedRow", "OutboxQueries", "StreamCounts")

# last_error is cut to this many characters (exception texts can be long).
MAX_ERROR_LENGTH: Final = 2000


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """A row a relay holds the lease of."""

    id: int
    event_id: str
    subject: str
    payload: bytes
    headers: str
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamCounts:
    """Rows of one stream by state, and the creation time of the oldest pending one."""

    stream: str
    pending: int = 0
    published: int = 0
    failed: int = 0
    oldest_pending_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """A row to try again after ``delay`` seconds, and why."""

    id: int
    delay: float
    error: str


class OutboxQueries:
    """The outbox statements for one table on one engine."""

    def __init__(self, engine: AsyncEngine, table: sa.Table, dialect: Dialect) -> None:
        self.engine = engine
        self.table = table
        self.dialect = dialect
        self._now = db_epoch(dialect)
        # Built once with bind parameters: the relay runs them for every window.
        self._claim = self._claim_statement()
        self._published = (
            sa.update(table)
            .where(
                table.c.id.in_(sa.bindparam("b_ids", expanding=True)),
                table.c.lease_owner == sa.bindparam("b_owner", type_=sa.String()),
            )
            .values(status=PUBLISHED, published_at=sa.bindparam("b_at"), lease_owner=None)
        )

    def _claim_statement(self) -> Any:
        t, now = self.table, self._now
        # Bind names differ from column names: an UPDATE reserves those.
        stream = sa.bindparam("b_stream", type_=sa.String())
        owner = sa.bindparam("b_owner", type_=sa.String())
        other = t.alias("held")
        held_elsewhere = sa.exists().where(
            other.c.stream == stream,
            other.c.status == PENDING,
            other.c.lease_owner.is_not(None),
            other.c.lease_owner != owner,
            other.c.available_at > now,
        )
        window = (
            sa.select(t.c.id)
            .where(t.c.stream == stream, t.c.status == PENDING, t.c.available_at <= now)
            .order_by(t.c.id)
            .limit(sa.bindparam("b_limit", type_=sa.Integer()))
        )
        if self.dialect == "postgresql":
            # Rows someone else is updating (an operator's retry) are left for the next window.
            window = window.with_for_update(skip_locked=True)
        return (
            sa.update(t)
            .where(t.c.id.in_(window.scalar_subquery()), ~held_elsewhere)
            .values(
                lease_owner=owner,
                available_at=now + sa.bindparam("b_lease", type_=sa.Float(53)),
            )
            .returning(t.c.id, t.c.event_id, t.c.subject, t.c.payload, t.c.headers, t.c.attempts)
        )

    async def claim(self, *, owner: str, stream: str, limit: int, lease: float) -> list[ClaimedRow]:
        """Lease up to ``limit`` of ``stream``'s oldest available pending rows, in id order.

        Nothing when another relay holds an unexpired lease on this stream's rows.
        """
        params = {"b_owner": owner, "b_stream": stream, "b_limit": limit, "b_lease": lease}
        async with self.engine.begin() as connection:
            if self.dialect == "postgresql":
                await connection.execute(advisory_lock(self.table, stream))
            rows = (await connection.execute(self._claim, params)).all()
        claimed = [ClaimedRow(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]
        claimed.sort(key=lambda row: row.id)
        return claimed

    async def has_available(self, stream: str) -> bool:
        """Whether a pending row could be claimed now (a read: no write lock on SQLite)."""
        t = self.table
        query = (
            sa.select(t.c.id)
            .where(t.c.stream == stream, t.c.status == PENDING, t.c.available_at <= self._now)
            .limit(1)
        )
        async with self.engine.connect() as connection:
            return (await connection.execute(query)).first() is not None

    async def settle(
        self,
        *,
        owner: str,
        published: Sequence[int],
        failed: Sequence[tuple[int, str]],
        retry: Sequence[Retry],
    ) -> None:
        """Record a window's outcome in one transaction, for rows this relay still holds."""
        t = self.table
        mine = t.c.lease_owner == owner
        now = datetime.now(timezone.utc)
        async with self.engine.begin() as connection:
            if published:
                await connection.execute(
                    self._published, {"b_ids": list(published), "b_owner": owner, "b_at": now}
                )
            for row_id, error in failed:
                await connection.execute(
                    sa.update(t)
                    .where(t.c.id == row_id, mine)
                    .values(
                        status=FAILED,
                        attempts=t.c.attempts + 1,
                        last_error=error[:MAX_ERROR_LENGTH],
                        lease_owner=None,
                    )
                )
            for item in retry:
                await connection.execute(
                    sa.update(t)
                    .where(t.c.id == item.id, mine)
                    .values(
                        attempts=t.c.attempts + 1,
                        last_error=item.error[:MAX_ERROR_LENGTH],
                        available_at=self._now + item.delay,
                        lease_owner=None,
                    )
                )

    async def release(self, *, owner: str, ids: Sequence[int], error: str | None = None) -> None:
        """Give rows back at once, in order: unsent (``error`` None), or NATS was unreachable
        for their whole window (``error`` says why; it counts as an attempt)."""
        t = self.table
        values: dict[str, Any] = {"available_at": 0.0, "lease_owner": None}
        if error is not None:
            values.update(attempts=t.c.attempts + 1, last_error=error[:MAX_ERROR_LENGTH])
        async with self.engine.begin() as connection:
            await connection.execute(
                sa.update(t).where(t.c.id.in_(ids), t.c.lease_owner == owner).values(values)
            )

    async def purge_published(self, *, older_than: float, limit: int = 10_000) -> int:
        """Delete up to ``limit`` rows published more than ``older_than`` seconds ago."""
        t = self.table
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=older_than)
        doomed = (
            sa.select(t.c.id)
            .where(t.c.status == PUBLISHED, t.c.published_at < cutoff)
            .limit(limit)
            .scalar_subquery()
        )
        async with self.engine.begin() as connection:
            result = await connection.execute(sa.delete(t).where(t.c.id.in_(doomed)))
        return int(result.rowcount or 0)

    async def counts(self, stream: str | None = None) -> list[StreamCounts]:
        """Rows per stream and state (all streams, or only ``stream``)."""
        t = self.table
        query = sa.select(t.c.stream, t.c.status, sa.func.count(), sa.func.min(t.c.created_at))
        if stream is not None:
            query = query.where(t.c.stream == stream)
        query = query.group_by(t.c.stream, t.c.status).order_by(t.c.stream)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        found: dict[str, dict[str, Any]] = {}
        for name, status, count, oldest in rows:
            entry = found.setdefault(name, {"stream": name})
            if status in (PENDING, PUBLISHED, FAILED):
                entry[status] = int(count)
            if status == PENDING:
                entry["oldest_pending_at"] = as_utc(oldest)
        if stream is not None and stream not in found:
            found[stream] = {"stream": stream}
        return [StreamCounts(**entry) for entry in found.values()]

    async def failed_rows(
        self, stream: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The oldest ``limit`` failed rows: id, event id, subject, attempts, error, time."""
        t = self.table
        query = sa.select(
            t.c.id,
            t.c.stream,
            t.c.event_id,
            t.c.subject,
            t.c.attempts,
            t.c.last_error,
            t.c.created_at,
        ).where(t.c.status == FAILED)
        if stream is not None:
            query = query.where(t.c.stream == stream)
        query = query.order_by(t.c.id).limit(limit)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [{**row, "created_at": as_utc(row["created_at"])} for row in rows]

    async def retry_failed(
        self, *, stream: str | None = None, event_ids: Sequence[str] = ()
    ) -> int:
        """Make failed rows pending again (all, or those of ``event_ids``); returns how many."""
        t = self.table
        statement = sa.update(t).where(t.c.status == FAILED)
        statement = self._narrowed(statement, stream, event_ids)
        async with self.engine.begin() as connection:
            result = await connection.execute(
                statement.values(status=PENDING, available_at=0.0, lease_owner=None)
            )
        return int(result.rowcount or 0)

    async def purge_failed(
        self, *, stream: str | None = None, event_ids: Sequence[str] = ()
    ) -> int:
        """Delete failed rows (all, or those of ``event_ids``); returns how many."""
        t = self.table
        statement = self._narrowed(sa.delete(t).where(t.c.status == FAILED), stream, event_ids)
        async with self.engine.begin() as connection:
            result = await connection.execute(statement)
        return int(result.rowcount or 0)

    def _narrowed(self, statement: Any, stream: str | None, event_ids: Sequence[str]) -> Any:
        t = self.table
        if stream is not None:
            statement = statement.where(t.c.stream == stream)
        if event_ids:
            statement = statement.where(t.c.event_id.in_(list(event_ids)))
        return statement


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every time stored here is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)
