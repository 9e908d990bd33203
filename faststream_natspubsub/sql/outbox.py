"""``Outbox``: events inserted in the caller's transaction, published after it commits.

``await pubsub.outbox.add(session, topic, message)`` builds and size-checks the envelope at
once (the same errors as ``publish``) and inserts one row through the caller's
``AsyncSession``. Nothing leaves before the commit; a rollback leaves nothing. The relay
(:mod:`.relay`) publishes committed rows while the broker runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from opentelemetry import metrics, propagate

from ..envelope import CONTENT_ENCODING_HEADER, new_event_id
from ..errors import EnvelopeError
from ..health import ComponentHealth, HealthStatus
from ..metadata import current_inbound
from ..publishing import OutgoingEvent
from ._require import require_sql_extra
from .dialects import dialect_of
from .metrics import OutboxMetrics
from .options import OutboxOptions
from .queries import OutboxQueries
from .relay import OutboxRelay
from .schema import outbox_table
from .wakeup import wake_after_commit

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from faststream import ContextRepo
    from nats.aio.client import Client as NatsClient
    from opentelemetry.metrics import Meter
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from ..facade import NatsPubsub
    from ..middlewares.envelope import EnvelopeMiddleware

__all__ = ("Outbox", "OutboxOptions", "OutboxStatus")

_MAX_EVENT_ID: int = 255


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStatus:
    """The outbox rows of one stream, by state."""

    stream: str
    pending: int
    published: int
    """Published and still within the retention."""
    failed: int
    oldest_pending_age: float | None
    """Seconds since the oldest pending row was added; ``None`` when nothing is pending."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "stream": self.stream,
            "pending": self.pending,
            "published": self.published,
            "failed": self.failed,
            "oldest_pending_age": self.oldest_pending_age,
        }


class Outbox:
    """The transactional outbox of one NatsPubsub app (``pubsub.outbox``)."""

    def __init__(
        self,
        options: OutboxOptions,
        *,
        stream: str,
        subject_for: Callable[[str], str],
        envelope: EnvelopeMiddleware,
        context: ContextRepo | None = None,
        meter: Meter | None = None,
        duplicate_window: float = 120.0,
    ) -> None:
        require_sql_extra("the outbox")
        if options.lease >= duplicate_window:
            raise ValueError(
                f"the outbox lease ({options.lease:g}s) must stay under the stream's duplicate "
                f"window ({duplicate_window:g}s): a row taken over after a lease ran out is "
                "published again, and only the duplicate window keeps it stored once"
            )
        self.options = options
        self.engine = options.engine
        self.dialect = dialect_of(options.engine)
        self.metadata = sa.MetaData()
        """The outbox table's ``MetaData``, for Alembic's ``target_metadata``."""
        self.table = outbox_table(self.metadata, options.prefix)
        self.stream = stream
        self.queries = OutboxQueries(self.engine, self.table, self.dialect)
        self.metrics = OutboxMetrics(meter or metrics.get_meter(__name__), stream)
        self.relay = OutboxRelay(self.queries, stream=stream, options=options, metrics=self.metrics)
        self._subject_for = subject_for
        self._envelope = envelope
        self._context = context
        self._insert = sa.insert(self.table)

    @classmethod
    def for_pubsub(cls, pubsub: NatsPubsub, outbox: AsyncEngine | OutboxOptions) -> Outbox:
        """The outbox of ``pubsub``: its stream, subjects, envelope and meter."""
        options = outbox if isinstance(outbox, OutboxOptions) else OutboxOptions(engine=outbox)
        return cls(
            options,
            stream=pubsub.stream,
            subject_for=pubsub.subject_for,
            envelope=pubsub.envelope,
            context=pubsub.broker.context,
            meter=pubsub.metrics.meter,
            duplicate_window=pubsub.stream_settings.duplicate_window,
        )

    async def create_tables(self) -> None:
        """Create the outbox table and its indexes if they do not exist."""
        async with self.engine.begin() as connection:
            await connection.run_sync(self.metadata.create_all)

    async def add(
        self,
        session: AsyncSession,
        topic: str,
        message: Any,
        *,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Insert the event in ``session``'s transaction; returns its event id.

        Raises :class:`SubjectError`, :class:`EnvelopeError` or :class:`MessageTooLargeError`
        at once, like ``publish``; nothing is inserted then. The trace of the current span
        goes with the event, so its consumers continue the transaction's trace.
        """
        subject = self._subject_for(topic)
        if event_id is not None:
            _check_event_id(event_id)
        event = OutgoingEvent(
            message=message,
            event_id=event_id or new_event_id(),
            occurred_at=occurred_at,
            metadata=metadata or {},
        )
        inbound = current_inbound(self._context) if self._context is not None else None
        data = self._envelope.build_envelope(subject.split(".", 2)[2], event, inbound)
        payload, compressed = self._envelope.codec.encode(data)
        headers: dict[str, str] = {
            "content-type": self._envelope.codec.content_type,
            # FastStream's correlation id header says what the envelope says.
            "correlation_id": str(data["metadata"]["correlation_id"]),
        }
        propagate.inject(headers)  # the adding transaction's traceparent, as publish sends it
        if compressed:
            headers[CONTENT_ENCODING_HEADER] = "gzip"
        await session.execute(
            self._insert.values(
                event_id=data["event_id"],
                stream=self.stream,
                subject=subject,
                payload=payload,
                headers=json.dumps(headers),
                created_at=datetime.now(timezone.utc),
            )
        )
        if self.relay.running:
            wake_after_commit(session, self.relay.wake)
        return str(data["event_id"])

    async def start(self, connection: NatsClient) -> None:
        """Start the relay on the broker's connection (when ``options.relay``)."""
        if self.options.relay:
            self.relay.start(connection)

    async def stop(self) -> None:
        """Stop the relay after the window in flight."""
        await self.relay.stop()

    async def status(self) -> OutboxStatus:
        """This stream's rows by state."""
        (counts,) = await self.queries.counts(self.stream)
        oldest = counts.oldest_pending_at
        age = None if oldest is None else (datetime.now(timezone.utc) - oldest).total_seconds()
        return OutboxStatus(
            stream=self.stream,
            pending=counts.pending,
            published=counts.published,
            failed=counts.failed,
            oldest_pending_age=None if age is None else max(age, 0.0),
        )

    async def failed_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest failed rows with their reasons."""
        return await self.queries.failed_rows(self.stream, limit)

    async def retry_failed(self, event_ids: Sequence[str] = ()) -> int:
        """Make failed rows pending again (all, or those of ``event_ids``)."""
        count = await self.queries.retry_failed(stream=self.stream, event_ids=event_ids)
        if count:
            self.relay.wake()
        return count

    async def purge_failed(self, event_ids: Sequence[str] = ()) -> int:
        """Delete failed rows (all, or those of ``event_ids``)."""
        return await self.queries.purge_failed(stream=self.stream, event_ids=event_ids)

    async def health(self) -> ComponentHealth:
        """Degraded when the oldest pending row is older than ``max_lag`` or rows failed;
        unhealthy when the database does not answer."""
        try:
            status = await self.status()
        except Exception as exc:  # noqa: BLE001 - any database failure is the verdict
            first_line = (str(exc).splitlines() or [""])[0][:200]
            return ComponentHealth(
                status=HealthStatus.UNHEALTHY,
                detail=f"database unreachable: {type(exc).__name__}: {first_line}",
            )
        data = status.to_dict()
        problems = []
        age = status.oldest_pending_age
        if age is not None and age > self.options.max_lag:
            problems.append(f"oldest pending row {age:.0f}s old > {self.options.max_lag:g}s")
        if status.failed:
            problems.append(f"{status.failed} failed rows")
        if problems:
            return ComponentHealth(
                status=HealthStatus.DEGRADED, detail=", ".join(problems), data=data
            )
        return ComponentHealth(status=HealthStatus.HEALTHY, detail="keeping up", data=data)


def _check_event_id(event_id: str) -> None:
    if not isinstance(event_id, str) or not event_id or len(event_id) > _MAX_EVENT_ID:
        raise EnvelopeError(f"event_id must be a string of 1 to {_MAX_EVENT_ID} characters")
    if not event_id.isprintable():
        raise EnvelopeError("event_id must not contain control characters")
