"""Dead-letters events whose consumer crashed on every delivery.

When a handler kills its process, no code runs to dead-letter the event: the server just
redelivers until the consumer's ``max_deliver``, then gives up and publishes a
MAX_DELIVERIES advisory naming the stream sequence. A healthy process hears it, fetches the
message from the stream (limits retention keeps it) and writes the DLQ record.

On a pull consumer the server sends the advisory when the next pull arrives, so the
subscription is made before the app's consumers start pulling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final

from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError
from pydantic_core import from_json

from .advisory_check import advisory_doubt
from .dlq import DeadLetterReason, DeadLetterWriter, FailedDelivery
from .errors import PublishError
from .metrics import PubsubMetrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ("MAX_DELIVERIES_ADVISORY", "MaxDeliveriesWatcher")

logger = logging.getLogger("faststream_natspubsub.advisories")

MAX_DELIVERIES_ADVISORY: Final = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
# Retries of a failed DLQ write for an advisory (there is no redelivery to fall back on).
_WRITE_RETRY_DELAYS: Final = (1.0, 5.0, 15.0, 60.0)


class MaxDeliveriesWatcher:
    """Listens to MAX_DELIVERIES advisories of the given consumers and dead-letters the events."""

    def __init__(
        self,
        *,
        writer: DeadLetterWriter,
        publish: Callable[..., Awaitable[Any]],
        consumers: Iterable[tuple[str, str]],
        metrics: PubsubMetrics | None = None,
        inbox: object | None = None,
    ) -> None:
        self._metrics = metrics or PubsubMetrics()
        self._inbox = inbox  # consulted to refute forged advisories (see advisory_check)
        self.rejected = 0
        self._writer = writer
        self._publish = publish
        self._consumers = tuple(consumers)
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: Client | None = None
        self.handled = 0

    async def start(self, client: Client) -> None:
        """Subscribe to each consumer's advisory (a queue group: one instance handles it)."""
        self._client = client
        self._subscriptions = []
        for stream, durable in self._consumers:
            subject = f"{MAX_DELIVERIES_ADVISORY}.{stream}.{durable}"
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
        try:
            try:
                raw = await js.get_msg(stream, seq)
            except NotFoundError:
                raw = None
            doubt = (
                "no message at that sequence"
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
        except NatsError as exc:
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
