"""The relay: publishes committed outbox rows through JetStream, in id order, pipelined.

One window at a time: claim (a lease on up to ``batch_size`` rows), send them all in one
write with ``Nats-Msg-Id`` = event id (:class:`~faststream_natspubsub.pipeline.PubAckRouter`),
collect the PubAcks, record the outcome. Per row:

- stored (a duplicate PubAck counts): ``published``;
- refused for good (larger than the server's ``max_payload``, no stream for the subject,
  another JetStream refusal, an unusable row): ``failed`` with the reason, and the rows
  behind it go on;
- no answer or a passing refusal while others went through: retried after a backoff of its
  own (it may then land after rows behind it);
- nothing went through at all (NATS unreachable): the rows are given back in order and the
  relay backs off, so an outage does not reorder anything.

It sleeps between windows until a commit in this process wakes it, or ``poll_interval``
passes. ``stop()`` lets the window in flight finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from nats.js.errors import APIError, NoStreamResponseError, NotFoundError
from pydantic_core import from_json

from ..envelope import format_timestamp
from ..errors import MessageTooLargeError, PublishError
from ..pipeline import PipelinedItem, PubAckRouter, header_block, header_line, header_value
from ..publishing import PUBLISH_RETRY_DELAYS, RETRIABLE_PUBLISH_ERRORS
from .queries import Retry

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from .metrics import OutboxMetrics
    from .options import OutboxOptions
    from .queries import ClaimedRow, OutboxQueries

__all__ = ("OutboxRelay", "backoff_delay")

logger = logging.getLogger("faststream_natspubsub.sql.relay")

_SUBJECT: Final = re.compile(r"[^\s*>]+")
# First backoff (seconds) of a row or of the relay; doubled per attempt up to max_backoff.
_FIRST_BACKOFF: Final = 0.5
# Seconds between purges of published rows past the retention.
_PURGE_INTERVAL: Final = 60.0
# Distinct stored header sets whose opening is kept (each traced row has its own).
_OPENINGS_LIMIT: Final = 1024


@dataclass(slots=True, kw_only=True)
class _Outcome:
    """What became of one window's rows."""

    ids: list[int]
    published: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    retry: list[Retry] = field(default_factory=list)
    outage: str | None = None
    """Set when nothing went through (NATS down or not answering): why."""


def backoff_delay(attempts: int, max_backoff: float) -> float:
    """Seconds to wait after ``attempts`` failed tries: 0.5, 1, 2, 4... capped."""
    return float(min(_FIRST_BACKOFF * 2 ** max(attempts - 1, 0), max_backoff))


class OutboxRelay:
    """Publishes one stream's outbox rows while the broker runs."""

    def __init__(
        self, queries: OutboxQueries, *, stream: str, options: OutboxOptions, metrics: OutboxMetrics
    ) -> None:
        self.queries = queries
        self.stream = stream
        self.options = options
        self.metrics = metrics
        # Seen in ``lease_owner``: which process holds a row.
        self.owner = f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.published = 0
        self.failed = 0
        self._connection: NatsClient | None = None
        self._router: PubAckRouter | None = None
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outages = 0
        self._next_purge = 0.0
        self._next_stats = 0.0
        self._idle = False
        self._openings: dict[str, bytes] = {}

    @property
    def running(self) -> bool:
        """Whether the relay's task is alive."""
        return self._task is not None and not self._task.done()

    def start(self, connection: NatsClient) -> None:
        """Start publishing through ``connection`` (the broker's)."""
        if self.running:
            return
        self._connection = connection
        self._router = PubAckRouter(connection)
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"natspubsub-outbox-relay-{self.stream}"
        )

    def wake(self) -> None:
        """Look for rows now (called after a commit that added some)."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Finish the window in flight, then stop."""
        self._stopping.set()
        self._wakeup.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    async def _run(self) -> None:
        # The next window is claimed while this one is published, and this one is settled
        # while the next is published: the database's round trips hide behind NATS's. A
        # window is sent only once the one before it has its PubAcks, so order holds.
        ahead: asyncio.Task[list[ClaimedRow]] | None = None
        settling: asyncio.Task[None] | None = None
        while not self._stopping.is_set():
            self._wakeup.clear()
            full = False
            try:
                rows = await ahead if ahead is not None else await self._claim()
                ahead = None
                if rows:
                    full = len(rows) >= self.options.batch_size
                    if full:
                        ahead = asyncio.get_running_loop().create_task(self._claim())
                    outcome = await self._send(rows)
                    settling, previous = None, settling
                    if previous is not None:
                        await previous
                    if outcome.outage is None:
                        settling = asyncio.get_running_loop().create_task(self._settle(outcome))
                    else:
                        full = False
                        await self._give_back(outcome, ahead)
                        ahead = None
                await self._maintain()
            except Exception:  # the database is unreachable, say: keep trying
                logger.exception("outbox relay of %s failed; retrying", self.stream)
                full = False
                self._outages += 1
                await self._abandon(ahead)
                ahead = None
            if self._outages:
                await self._pause(backoff_delay(self._outages, self.options.max_backoff))
            elif not full:
                await self._wait(self.options.poll_interval)
        # Stopping: the window in flight is settled; one claimed ahead is given back unsent.
        await self._abandon(ahead)
        if settling is not None:
            try:
                await settling
            except Exception:  # its rows' lease runs out; their re-publish is a duplicate
                logger.exception("outbox relay of %s could not record its last window", self.stream)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` whatever commits happen meanwhile; ``stop`` ends it."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _wait(self, seconds: float) -> None:
        """Sleep until woken, stopped, or ``seconds`` passed."""
        try:
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        else:
            self._idle = False

    async def _claim(self) -> list[ClaimedRow]:
        """The next window: up to ``batch_size`` rows, in id order (nothing while NATS is
        unreachable, or another relay holds this stream's rows)."""
        connection = self._connection
        if connection is None or not connection.is_connected:
            self._outages += 1  # reconnecting: nothing can be published
            return []
        if self._idle and not await self.queries.has_available(self.stream):
            return []  # a read first: an idle relay takes no write lock on each poll
        options = self.options
        rows = await self.queries.claim(
            owner=self.owner, stream=self.stream, limit=options.batch_size, lease=options.lease
        )
        self._idle = not rows
        if not rows:
            self._outages = 0
        return rows

    async def _send(self, rows: list[ClaimedRow]) -> _Outcome:
        """Publish one window (with the quick retries) and sort its rows by outcome."""
        assert self._router is not None
        published_at = header_line(
            "Nats-Published-At", format_timestamp(datetime.now(timezone.utc))
        )
        items: list[tuple[ClaimedRow, PipelinedItem]] = []
        outcome = _Outcome(ids=[row.id for row in rows])
        for row in rows:
            try:
                items.append((row, self._item(row, published_at)))
            except (ValueError, PublishError) as exc:
                outcome.failed.append((row.id, f"unusable row: {exc}"))
        pending = [item for _, item in items]
        for delay in (*PUBLISH_RETRY_DELAYS, None):
            await self._router.send_round(pending, self.options.publish_timeout)
            pending = [item for item in pending if item.error is not None and item.retriable]
            if not pending or delay is None:
                break
            await asyncio.sleep(delay)
        transient: list[tuple[ClaimedRow, str]] = []
        missing_stream = await self._stream_missing(items)
        for row, item in items:
            if item.error is None:
                outcome.published.append(row.id)
            elif _refused_for_good(item.error) or (missing_stream and _no_stream(item.error)):
                outcome.failed.append((row.id, _reason(item.error, missing_stream)))
            else:
                transient.append((row, _reason(item.error, False)))
        if transient and not outcome.published and not outcome.failed:
            outcome.outage = transient[0][1]  # nothing went through: keep the order
            return outcome
        outcome.retry = [
            Retry(row.id, backoff_delay(row.attempts + 1, self.options.max_backoff), error)
            for row, error in transient
        ]
        return outcome

    async def _settle(self, outcome: _Outcome) -> None:
        await self.queries.settle(
            owner=self.owner,
            published=outcome.published,
            failed=outcome.failed,
            retry=outcome.retry,
        )
        self._outages = 0
        self._count(outcome.published, outcome.failed)

    async def _give_back(
        self, outcome: _Outcome, ahead: asyncio.Task[list[ClaimedRow]] | None
    ) -> None:
        """NATS took nothing of the window: give it back in order, and the next one unsent."""
        self._outages += 1
        logger.warning(
            "outbox relay of %s could not publish %d rows (%s); backing off",
            self.stream,
            len(outcome.ids),
            outcome.outage,
        )
        await self.queries.release(owner=self.owner, ids=outcome.ids, error=outcome.outage or "")
        await self._abandon(ahead)

    async def _abandon(self, ahead: asyncio.Task[list[ClaimedRow]] | None) -> None:
        """Give back the rows of a window claimed ahead and not sent (as they were)."""
        if ahead is None:
            return
        try:
            rows = await ahead
            if rows:
                await self.queries.release(owner=self.owner, ids=[row.id for row in rows])
        except Exception:  # noqa: BLE001 - its lease runs out instead
            logger.warning("outbox relay of %s kept a claim until its lease ends", self.stream)

    def _item(self, row: ClaimedRow, published_at: bytes) -> PipelinedItem:
        if not row.event_id or not _SUBJECT.fullmatch(row.subject):
            raise ValueError(f"subject {row.subject!r} or event id {row.event_id!r} is invalid")
        headers = (
            self._header_opening(row.headers)
            + published_at
            + b"Nats-Msg-Id: "
            + header_value(row.event_id)
            + b"\r\n\r\n"
        )
        return PipelinedItem(
            event_id=row.event_id, subject=row.subject, payload=row.payload, headers=headers
        )

    def _header_opening(self, stored_json: str) -> bytes:
        """The header block's opening for a row's stored headers (rows without a trace share
        theirs: it is built once)."""
        opening = self._openings.get(stored_json)
        if opening is not None:
            return opening
        stored = from_json(stored_json) if stored_json else {}
        if not isinstance(stored, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in stored.items()
        ):
            raise ValueError("headers are not a JSON object of strings")
        opening = header_block({**stored, "Nats-Expected-Stream": self.stream})
        if len(self._openings) >= _OPENINGS_LIMIT:
            self._openings.clear()
        self._openings[stored_json] = opening
        return opening

    async def _stream_missing(self, items: list[tuple[ClaimedRow, PipelinedItem]]) -> bool:
        """Whether "no responders" means no stream holds the subject (not a passing outage)."""
        subject = next((i.subject for _, i in items if i.error and _no_stream(i.error)), None)
        if subject is None or self._connection is None:
            return False
        try:
            await self._connection.jsm(timeout=2.0).find_stream_name_by_subject(subject)
        except NotFoundError:
            return True
        except Exception:  # noqa: BLE001 - cannot tell: treat it as passing
            return False
        return False

    def _count(self, published: list[int], failed: list[tuple[int, str]]) -> None:
        self.published += len(published)
        self.failed += len(failed)
        attributes = self.metrics.attributes
        if published:
            self.metrics.published.add(len(published), attributes)
        if failed:
            self.metrics.failed.add(len(failed), attributes)
            logger.error(
                "outbox relay of %s moved %d rows to failed: %s",
                self.stream,
                len(failed),
                failed[0][1],
            )

    async def _maintain(self) -> None:
        """Purge published rows past the retention; refresh the backlog gauges."""
        now = time.monotonic()
        if now >= self._next_purge:
            self._next_purge = now + min(_PURGE_INTERVAL, max(self.options.retention, 1.0))
            await self.queries.purge_published(older_than=self.options.retention)
        if now >= self._next_stats:
            self._next_stats = now + self.options.stats_interval
            (counts,) = await self.queries.counts(self.stream)
            oldest = counts.oldest_pending_at
            self.metrics.record_backlog(
                counts.pending, None if oldest is None else oldest.timestamp()
            )


def _cause(error: BaseException) -> BaseException:
    return error.__cause__ if isinstance(error, PublishError) and error.__cause__ else error


def _no_stream(error: BaseException) -> bool:
    return isinstance(_cause(error), NoStreamResponseError)


def _refused_for_good(error: BaseException) -> bool:
    cause = _cause(error)
    if isinstance(error, MessageTooLargeError):
        return True
    return isinstance(cause, APIError) and not isinstance(cause, RETRIABLE_PUBLISH_ERRORS)


def _reason(error: BaseException, missing_stream: bool) -> str:
    if missing_stream and _no_stream(error):
        return "no stream holds this subject"
    if isinstance(error, MessageTooLargeError):
        return f"too large for the server: {error}"
    cause: Any = _cause(error)
    description = getattr(cause, "description", None)
    return f"{type(cause).__name__}: {description or cause}"
