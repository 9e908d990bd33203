"""Dead-letters events whose consumer crashed on every delivery.

When a handler kills its process, no code runs to dead-letter the event: the server just
redelivers until the consumer's ``max_deliver``, then gives up and publishes a
MAX_DELIVERIES advisory naming the stream sequence. A healthy process hears it, reads the
message from the stream (limits retention keeps it) through a reader filtered like its
consumer (:mod:`.advisory_read`: no right to read other topics is needed) and writes the DLQ
record.

On a pull consumer the server sends the advisory when the next pull arrives, so the
subscription is made before the app's consumers start pulling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final

from nats.errors import Error as NatsError
from pydantic_core import from_json

from .advisory_check import advisory_doubt
from .advisory_read import read_delivered
from .dlq import DeadLetterReason, DeadLetterWriter, FailedDelivery
from .errors import PublishError
from .metrics import PubsubMetrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from .violations import PermissionWatch

__all__ = ("MAX_DELIVERIES_ADVISORY", "MaxDeliveriesWatcher", "advisory_subject")

logger = logging.getLogger("faststream_natspubsub.advisories")

MAX_DELIVERIES_ADVISORY: Final = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
# Retries of a failed DLQ write for an advisory (there is no redelivery to fall back on).
_WRITE_RETRY_DELAYS: Final = (1.0, 5.0, 15.0, 60.0)


def advisory_subject(stream: str, durable: str) -> str:
    """The subject of the MAX_DELIVERIES advisories of one consumer."""
    return f"{MAX_DELIVERIES_ADVISORY}.{stream}.{durable}"


class MaxDeliveriesWatcher:
    """Listens to MAX_DELIVERIES advisories of the given consumers and dead-letters the events."""

    def __init__(
        self,
        *,
        writer: DeadLetterWriter,
        publish: Callable[..., Awaitable[Any]],
        consumers: Mapping[tuple[str, str], str],
        metrics: PubsubMetrics | None = None,
        inbox: object | None = None,
        watch: PermissionWatch | None = None,
    ) -> None:
        """``consumers`` maps each ``(stream, durable)`` to its filter subject."""
        self._metrics = metrics or PubsubMetrics()
        self._inbox = inbox  # consulted to refute forged advisories (see advisory_check)
        self.rejected = 0
        self._writer = writer
        self._publish = publish
        self._filters = dict(consumers)
        self._watch = watch
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: Client | None = None
        self.handled = 0

    async def start(self, client: Client) -> None:
        """Subscribe to each consumer's advisory (a queue group: one instance handles it)."""
        self._client = client
        self._subscriptions = []
        for stream, durable in self._filters:
            subject = advisory_subject(stream, durable)
            subscription = await client.subscribe(
                subject, queue=f"natspubsub-advisory-{durable}", cb=self._on_advisory
            )
            self._subscriptions.append(subscription)
        await client.flush()

    async def stop(self) -> None:
        """Unsubscribe and wait briefly for writes in progress."""
        for subscription in self._subscriptions:
            with contextlib.suppress(NatsError):  # the connection may be closing already
                await subscription.unsubscribe()
        self._subscriptions.clear()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _on_advisory(self, msg: Msg) -> None:
        # Handled in a task: the callback must not block other advisories.
        task = asyncio.get_running_loop().create_task(self._dead_letter(msg.subject, msg.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dead_letter(self, subject: str, data: bytes) -> None:
        # The subject is the one subscribed to: it names the stream and durable for sure.
        stream, durable = subject.split(".")[-2:]
        try:
            advisory = from_json(data)
            seq = advisory["stream_seq"]
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                raise TypeError("stream_seq")
            consumer, deliveries = durable, int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError):
            logger.error("unreadable MAX_DELIVERIES advisory on %s: %r", subject, data[:500])
            return
        assert self._client is not None
        js = self._client.jetstream()
        filter_subject = self._filters.get((stream, durable))
        if filter_subject is None:  # not a subject this watcher subscribed to
            return
        try:
            raw = await read_delivered(
                self._client,
                stream=stream,
                durable=durable,
                filter_subject=filter_subject,
                seq=seq,
                watch=self._watch,
            )
            doubt = (
                "no message the consumer reads at that sequence"
                if raw is None
                else await advisory_doubt(
                    js,
                    stream=stream,
                    durable=durable,
                    advisory=advisory,
                    message=raw,
                    inbox=self._inbox,
                    codec=self._writer.codec,
                )
            )
        except (NatsError, PublishError) as exc:  # PublishError: a refused permission
            logger.error(
                "MAX_DELIVERIES advisory for %s seq %d could not be checked (%r): not acted on; "
                "the event, if any, stays in the stream",
                stream,
                seq,
                exc,
            )
            return
        if doubt is not None:
            self.rejected += 1
            logger.warning(
                "MAX_DELIVERIES advisory for %s seq %d ignored: %s (forged, or stale)",
                stream,
                seq,
                doubt,
                extra={"natspubsub_stream_seq": seq, "natspubsub_consumer": durable},
            )
            return
        assert raw is not None
        failure = FailedDelivery(
            subject=raw.subject or "",
            body=raw.data or b"",
            headers=raw.headers or {},
            stream=stream,
            stream_seq=seq,
            consumer=consumer,
            deliveries=deliveries,
            reason=DeadLetterReason.MAX_DELIVER_EXCEEDED,
        )
        for delay in (*_WRITE_RETRY_DELAYS, None):
            try:
                record = await self._writer.write(failure, self._publish)
            except (PublishError, NatsError) as exc:
                if delay is None:
                    logger.error(
                        "event at %s seq %d reached max_deliver and could not be dead-lettered: "
                        "%s; it stays in the stream",
                        stream,
                        seq,
                        exc,
                    )
                    return
                await asyncio.sleep(delay)
            else:
                self.handled += 1
                self._metrics.dead_lettered.add(
                    1,
                    {
                        **self._metrics.attributes(failure.subject),
                        "natspubsub.reason": record.reason,
                    },
                )
                logger.error(
                    "event %s on %s dead-lettered: max_deliver_exceeded after %d deliveries "
                    "(the consumer crashed or hung on every delivery)",
                    record.event_id,
                    failure.subject,
                    deliveries,
                    extra={
                        "natspubsub_event_id": record.event_id,
                        "natspubsub_subject": failure.subject,
                        "natspubsub_stream_seq": seq,
                        "natspubsub_reason": record.reason,
                    },
                )
                return
