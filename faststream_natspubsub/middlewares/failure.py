"""Turns a handler's outcome into ACK, a delayed NAK, or a dead-letter record plus TERM.

FastStream's default for JetStream terminates a message on the first exception. Here:

- success: ACK (FastStream's acknowledgement middleware does it);
- a retriable failure with attempts left: NAK with the retry policy's delay;
- a permanent failure (validation, :class:`PermanentError`, malformed envelope) or the last
  attempt: a record in the DLQ stream, then TERM with the reason;
- a DLQ write that fails: NAK with a delay, never ACK or TERM, so nothing is lost.

The decisions live on :class:`FailureMiddleware` so batch mode makes the same ones per item.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final, NoReturn

from faststream.exceptions import AckMessage, HandlerException, NackMessage, RejectMessage
from nats.errors import Error as NatsError
from pydantic import ValidationError
from pydantic.errors import PydanticUserError
from pydantic_core import from_json

from ..compat import mark_settled, message_client
from ..dlq import DeadLetterReason, DeadLetterWriter, FailedDelivery
from ..errors import (
    DeadLetterQueueFullError,
    MalformedEnvelopeError,
    PermanentError,
    PermissionDeniedError,
    RetryLater,
    one_line,
)
from ..metrics import PubsubMetrics
from ..retry import RetryPolicy
from ..subjects import normalize_env
from ..tracing import record_span_event
from ._delegate import ConsumeDelegate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from faststream import ContextRepo
    from faststream.message import StreamMessage

__all__ = (
    "Delivery",
    "FailureMiddleware",
    "Outcome",
    "delivery_count",
    "terminate_raw",
)

logger = logging.getLogger("faststream_natspubsub.failure")
# An error message in a log line is cut to this many characters.
_LOGGED_ERROR_LENGTH: Final = 300

# First-failure times are remembered per message in this process, for the DLQ record.
_FIRST_FAILURES_LIMIT: Final = 10_000
UNFINISHED: Final = (
    "delivered more often than max_attempts: an earlier attempt did not finish (the process "
    "crashed or the handler outlived ack_wait) or its dead-lettering failed"
)
# Errors that say the handler cannot be called as declared: its code must change.
_PROGRAMMING_ERRORS: Final = (PydanticUserError,)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A failed delivery's fate: dead-letter it for ``reason``, or retry after ``delay``."""

    reason: DeadLetterReason | None = None
    delay: float = 0.0


class FailureMiddleware:
    """Retry with backoff, error classification and dead-lettering for NatsPubsub subjects.

    Usable by hand in ``NatsBroker(middlewares=[FailureMiddleware(...), EnvelopeMiddleware(...)])``;
    it must come before (outside) the envelope middleware so it sees malformed envelopes.
    """

    def __init__(
        self,
        *,
        env: str,
        retry: RetryPolicy | None = None,
        dlq: DeadLetterWriter | None = None,
        metrics: PubsubMetrics | None = None,
    ) -> None:
        self.subject_prefix = f"{normalize_env(env)}."
        self.retry = retry or RetryPolicy()
        self.dlq = dlq
        self.metrics = metrics or PubsubMetrics()
        self._first_failures: OrderedDict[tuple[str, int], datetime] = OrderedDict()

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> ConsumeDelegate:
        return ConsumeDelegate(msg, context=context, config=self)

    def is_permanent(self, exc: BaseException) -> bool:
        """True when retrying cannot help; ``retry_on`` wins over everything else."""
        policy = self.retry
        if policy.retry_on and isinstance(exc, policy.retry_on):
            return False
        return isinstance(exc, ValidationError | PermanentError | MalformedEnvelopeError) or bool(
            policy.dead_letter_on and isinstance(exc, policy.dead_letter_on)
        )

    def decide(self, delivery: Delivery, exc: BaseException) -> Outcome:
        """Classify a failure of ``delivery``: dead-letter (with a reason) or retry (a delay)."""
        if isinstance(exc, MalformedEnvelopeError):
            return Outcome(DeadLetterReason.MALFORMED)
        if isinstance(exc, PermissionDeniedError):  # an operations problem, not the event's
            return Outcome(
                delay=self.retry.delay_for(min(delivery.deliveries, self.retry.max_attempts))
            )
        if isinstance(exc, _PROGRAMMING_ERRORS) and not isinstance(exc, self.retry.retry_on):
            return Outcome(DeadLetterReason.PROGRAMMING_ERROR)
        if self.is_permanent(exc):
            return Outcome(DeadLetterReason.PERMANENT_ERROR)
        if delivery.deliveries >= self.retry.max_attempts:
            return Outcome(DeadLetterReason.MAX_ATTEMPTS_EXCEEDED)
        delay = exc.delay if isinstance(exc, RetryLater) else None
        return Outcome(delay=self.retry.delay_for(delivery.deliveries) if delay is None else delay)

    def record_retry(self, delivery: Delivery, delay: float, exc: BaseException) -> None:
        """Log, count and trace one retry decision."""
        self.remember_failure(delivery.key, delivery.received_at)
        self.metrics.retried.add(1, self.metrics.attributes(delivery.subject))
        record_span_event(
            "natspubsub.retry",
            {
                "natspubsub.attempt": delivery.deliveries,
                "natspubsub.delay_s": delay,
                "exception.type": type(exc).__qualname__,
                "exception.message": str(exc)[:500],
            },
        )
        # One line per retry; the traceback only at DEBUG (it is logged with the dead letter).
        fields = delivery.log_fields(delay=delay)
        logger.warning(
            "handler failed on attempt %d/%d of event %s on %s (%s: %s); retrying in %.3fs",
            delivery.deliveries,
            self.retry.max_attempts,
            delivery.event_id,
            delivery.subject,
            type(exc).__qualname__,
            one_line(exc, _LOGGED_ERROR_LENGTH),
            delay,
            extra=fields,
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("traceback of the failed attempt", exc_info=exc, extra=fields)

    def record_success(self, delivery: Delivery) -> None:
        """Count an acknowledged delivery and forget its failures."""
        if self.metrics.enabled:
            self.metrics.acked.add(1, self.metrics.attributes(delivery.subject))
        if delivery.deliveries > 1:
            self.forget_failure(delivery.key)

    async def dead_letter(
        self,
        delivery: Delivery,
        reason: DeadLetterReason,
        exc: BaseException | None,
        publish: Callable[..., Awaitable[Any]],
        *,
        detail: str | None = None,
    ) -> bool:
        """Write the DLQ record; False (logged) when it could not be stored, or no DLQ."""
        first = self.remember_failure(delivery.key, delivery.received_at)
        fields = delivery.log_fields(reason=reason.value)
        if self.dlq is None:
            logger.error(
                "event %s on %s terminated (%s); the DLQ is disabled",
                delivery.event_id,
                delivery.subject,
                reason.value,
                exc_info=exc,
                extra=fields,
            )
            self.forget_failure(delivery.key)
            return True
        failure = FailedDelivery(
            subject=delivery.subject,
            body=delivery.body,
            headers=delivery.headers,
            stream=delivery.stream,
            stream_seq=delivery.stream_seq,
            consumer=delivery.consumer,
            deliveries=delivery.deliveries,
            reason=reason,
            error=exc,
            detail=detail,
            first_failure_at=first,
            last_failure_at=delivery.received_at,
        )
        try:
            await self.dlq.write(failure, publish)
        except Exception as dlq_error:  # not stored, whatever the cause: retried after a delay
            # A full DLQ is logged once a minute by the writer, a refused permission once by
            # the app's permission monitor; one line per event is enough.
            quiet = isinstance(dlq_error, DeadLetterQueueFullError | PermissionDeniedError)
            logger.log(
                logging.WARNING if quiet else logging.ERROR,
                "event %s on %s could not be dead-lettered (%s: %s); it will be retried",
                delivery.event_id,
                delivery.subject,
                reason.value,
                dlq_error,
                exc_info=exc,
                extra=fields,
            )
            return False
        self.forget_failure(delivery.key)
        self.metrics.dead_lettered.add(
            1, {**self.metrics.attributes(delivery.subject), "natspubsub.reason": reason.value}
        )
        record_span_event(
            "natspubsub.dead_letter",
            {
                "natspubsub.reason": reason.value,
                "natspubsub.attempt": delivery.deliveries,
                "exception.type": type(exc).__qualname__ if exc is not None else None,
            },
        )
        logger.error(
            "event %s on %s dead-lettered after %d deliveries: %s",
            delivery.event_id,
            delivery.subject,
            delivery.deliveries,
            reason.value,
            exc_info=exc,
            extra=fields,
        )
        return True

    async def consume(
        self,
        context: ContextRepo,
        msg: StreamMessage[Any],
        call_next: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        """Run ``call_next`` and turn its failure into a delayed NAK or a dead letter.

        Composed by hand: a delivery past ``max_attempts`` is dead-lettered without running
        the handler. (The facade's combined flow asks the inbox first, so a duplicate of a
        processed event is still acknowledged there.)
        """
        raw = msg.raw_message
        subject = getattr(raw, "subject", "")
        if not isinstance(subject, str) or not subject.startswith(self.subject_prefix):
            return await call_next(msg)  # not ours, or a batch (handled by batch mode)
        # Only the delivery count on the success path: the full JetStream metadata costs
        # several microseconds per message and is needed only when something fails.
        deliveries = delivery_count(raw)
        if deliveries > self.retry.max_attempts:
            await self.settle_exhausted(context, Delivery.of(raw, msg.body, event_id=None))
        try:
            result = await call_next(msg)
        except AckMessage:  # the handler acknowledged it itself
            self.succeeded(raw, subject, deliveries)
            raise
        except HandlerException:
            raise  # the handler chose NAK / TERM itself
        except Exception as exc:  # noqa: BLE001 - any handler failure is retried or dead-lettered
            await self.settle_failure(context, Delivery.of(raw, msg.body, event_id=None), exc)
        self.succeeded(raw, subject, deliveries)
        return result

    def succeeded(self, raw: Any, subject: str, deliveries: int) -> None:
        """Count an acknowledged delivery; forget its failures if it had some."""
        if self.metrics.enabled:
            self.metrics.acked.add(1, self.metrics.attributes(subject))
        if deliveries > 1 and self._first_failures:
            self.forget_failure(Delivery.of(raw).key)

    async def settle_failure(
        self, context: ContextRepo, delivery: Delivery, exc: Exception
    ) -> NoReturn:
        """A handler failed: dead-letter the event or NAK it with the policy's delay."""
        outcome = self.decide(delivery, exc)
        if outcome.reason is not None:
            await self.settle_dead_letter(context, delivery, outcome.reason, exc)
        self.record_retry(delivery, outcome.delay, exc)
        raise NackMessage(delay=outcome.delay) from exc

    async def settle_exhausted(self, context: ContextRepo, delivery: Delivery) -> NoReturn:
        """Dead-letter a delivery beyond ``max_attempts`` without running its handler.

        Its last attempt did not finish (a crash, a hang past ack_wait) or could not
        dead-letter.
        """
        await self.settle_dead_letter(
            context, delivery, DeadLetterReason.MAX_ATTEMPTS_EXCEEDED, None
        )

    async def settle_dead_letter(
        self,
        context: ContextRepo,
        delivery: Delivery,
        reason: DeadLetterReason,
        exc: BaseException | None,
    ) -> NoReturn:
        """Dead-letter, then TERM; NAK with a delay if the DLQ did not take it."""
        detail = UNFINISHED if exc is None else None
        publish = context.get("broker").publish
        if not await self.dead_letter(delivery, reason, exc, publish, detail=detail):
            raise NackMessage(delay=self.dlq_retry_delay(delivery))
        await terminate_raw(delivery.raw, reason.value)
        raise RejectMessage

    def dlq_retry_delay(self, delivery: Delivery) -> float:
        """How long to wait before trying a failed dead-letter write again."""
        return self.retry.delay_for(min(delivery.deliveries, self.retry.max_attempts))

    def remember_failure(self, key: tuple[str, int] | None, now: datetime) -> datetime:
        """When this message first failed here (``now`` for the first time)."""
        if key is None:
            return now
        first = self._first_failures.setdefault(key, now)
        if len(self._first_failures) > _FIRST_FAILURES_LIMIT:
            self._first_failures.popitem(last=False)
        return first

    def forget_failure(self, key: tuple[str, int] | None) -> datetime | None:
        """Drop and return the first failure time of a message that is done."""
        return None if key is None else self._first_failures.pop(key, None)


class Delivery:
    """JetStream facts of one delivery; neutral values for in-memory messages."""

    __slots__ = (
        "body",
        "consumer",
        "deliveries",
        "envelope_event_id",
        "headers",
        "raw",
        "received_at",
        "stream",
        "stream_seq",
        "subject",
    )

    def __init__(self, raw: Any, subject: str, body: bytes, headers: Mapping[str, str]) -> None:
        self.raw = raw
        self.subject = subject
        self.body = body
        self.headers = headers
        self.received_at = datetime.now(timezone.utc)
        self.deliveries = 1
        self.stream: str | None = None
        self.stream_seq: int | None = None
        self.consumer: str | None = None
        self.envelope_event_id: str | None = None

    @classmethod
    def of(cls, raw: Any, body: bytes | None = None, *, event_id: str | None = None) -> Delivery:
        """Read the delivery facts of a nats-py message (``event_id``: its envelope's)."""
        delivery = cls(raw, raw.subject, raw.data if body is None else body, raw.headers or {})
        delivery.envelope_event_id = event_id
        try:
            js = raw.metadata
        except (NatsError, AttributeError, ValueError, IndexError):  # not a JetStream delivery
            return delivery
        delivery.deliveries = js.num_delivered or 1
        delivery.stream, delivery.stream_seq = js.stream, js.sequence.stream
        delivery.consumer = js.consumer
        return delivery

    @property
    def key(self) -> tuple[str, int] | None:
        if self.stream is None or self.stream_seq is None:
            return None
        return (self.stream, self.stream_seq)

    @property
    def event_id(self) -> str:
        """The envelope's event id (read from the body if the caller did not decode it);
        the ``Nats-Msg-Id`` header when the body is not an envelope."""
        if self.envelope_event_id is None:
            self.envelope_event_id = _event_id_in(self.body) or str(
                self.headers.get("Nats-Msg-Id", "?")
            )
        return self.envelope_event_id

    def log_fields(self, **more: Any) -> dict[str, Any]:
        fields = {
            "natspubsub_event_id": self.event_id,
            "natspubsub_subject": self.subject,
            "natspubsub_topic": self.subject.split(".", 2)[-1],
            "natspubsub_attempt": self.deliveries,
            "natspubsub_stream_seq": self.stream_seq,
        }
        fields.update({f"natspubsub_{key}": value for key, value in more.items()})
        return fields


def ack_line(raw: Any) -> bytes:
    """The protocol line of ``raw``'s ``+ACK`` (what nats-py's ``ack()`` publishes), for
    acknowledgements written many in one go."""
    return b"PUB %s 4\r\n+ACK\r\n" % raw.reply.encode()


async def terminate_raw(raw: Any, reason: str) -> None:
    """TERM with a reason (it appears in the server's MSG_TERMINATED advisory).

    nats-py's ``term()`` sends no reason, so ``+TERM <reason>`` is published by hand, and
    the message is marked settled as ``term()`` would, so FastStream's reject sends nothing.
    """
    reply = getattr(raw, "reply", "")
    client = message_client(raw)  # None for TestNatsBroker's in-memory messages
    if client is not None and reply.startswith("$JS.ACK.") and not raw.is_acked:
        await client.publish(reply, b"+TERM " + reason.encode())
        mark_settled(raw)


def _event_id_in(body: bytes) -> str | None:
    """The event id of an envelope body, for logs and records (failure paths only)."""
    try:
        data = from_json(body)
    except ValueError:
        return None
    event_id = data.get("event_id") if isinstance(data, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


def delivery_count(raw: Any) -> int:
    """The delivery count from a JetStream reply subject, without parsing the rest.

    ``$JS.ACK.<stream>.<consumer>.<delivered>...`` (9 tokens) or, with a domain and account
    hash, ``$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>...`` (12 tokens).
    """
    reply = getattr(raw, "reply", None)
    if not isinstance(reply, str) or not reply.startswith("$JS.ACK."):
        return 1
    index = 4 if reply.count(".") == 8 else 6
    try:
        return int(reply.split(".", index + 1)[index])
    except (IndexError, ValueError):
        return 1
