"""Turns a handler's outcome into ACK, a delayed NAK, or a dead-letter record plus TERM.

FastStream's default for JetStream terminates a message on the first exception. Here:

- success: ACK (FastStream's acknowledgement middleware does it);
- a retriable failure with attempts left: NAK with the retry policy's delay;
- a permanent failure (validation, :class:`PermanentError`, malformed envelope) or the last
  attempt: a record in the DLQ stream, then TERM with the reason;
- a DLQ write that fails: NAK with a delay, never ACK or TERM, so nothing is lost.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final, NoReturn

from faststream import BaseMiddleware
from faststream.exceptions import AckMessage, HandlerException, NackMessage, RejectMessage
from nats.errors import Error as NatsError
from pydantic import ValidationError

from ..dlq import DeadLetterReason, DeadLetterWriter, FailedDelivery
from ..envelope import MalformedEnvelopeError
from ..errors import PermanentError, PublishError, RetryLater
from ..metrics import PubsubMetrics
from ..retry import RetryPolicy
from ..tracing import record_span_event

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage

__all__ = ("FailureMiddleware",)

logger = logging.getLogger("faststream_natspubsub.failure")

# First-failure times are remembered per message in this process, for the DLQ record.
_FIRST_FAILURES_LIMIT: Final = 10_000
_UNFINISHED: Final = (
    "delivered more often than max_attempts: an earlier attempt did not finish (the process "
    "crashed or the handler outlived ack_wait) or its dead-lettering failed"
)


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
        self.subject_prefix = f"{env}."
        self.retry = retry or RetryPolicy()
        self.dlq = dlq
        self.metrics = metrics or PubsubMetrics()
        self._first_failures: OrderedDict[tuple[str, int], datetime] = OrderedDict()

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _FailureMiddleware:
        return _FailureMiddleware(msg, context=context, config=self)

    def is_permanent(self, exc: BaseException) -> bool:
        """True when retrying cannot help; ``retry_on`` wins over everything else."""
        policy = self.retry
        if policy.retry_on and isinstance(exc, policy.retry_on):
            return False
        return isinstance(exc, ValidationError | PermanentError | MalformedEnvelopeError) or bool(
            policy.dead_letter_on and isinstance(exc, policy.dead_letter_on)
        )

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


class _FailureMiddleware(BaseMiddleware):
    __slots__ = ("_config",)

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: FailureMiddleware) -> None:
        super().__init__(msg, context=context)
        self._config = config

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        config = self._config
        subject: str = getattr(msg.raw_message, "subject", "")
        if not subject.startswith(config.subject_prefix):
            return await call_next(msg)
        delivery = _Delivery.of(msg)
        if delivery.deliveries > config.retry.max_attempts:
            # Its last attempt did not finish (a crash, a hang past ack_wait) or could not
            # dead-letter: do not run the handler again.
            await self._dead_letter(
                msg, delivery, DeadLetterReason.MAX_ATTEMPTS_EXCEEDED, None, _UNFINISHED
            )
        try:
            result = await call_next(msg)
        except AckMessage:  # the handler (or the inbox, for a duplicate) acknowledged it
            config.metrics.acked.add(1, config.metrics.attributes(subject))
            raise
        except HandlerException:
            raise  # the handler chose NAK / TERM itself
        except Exception as exc:  # noqa: BLE001 - every failure is classified below
            await self._on_failure(msg, delivery, exc)
        config.metrics.acked.add(1, config.metrics.attributes(subject))
        if delivery.deliveries > 1:
            config.forget_failure(delivery.key)
        return result

    async def _on_failure(
        self, msg: StreamMessage[Any], delivery: _Delivery, exc: Exception
    ) -> NoReturn:
        config, policy = self._config, self._config.retry
        if isinstance(exc, MalformedEnvelopeError):
            await self._dead_letter(msg, delivery, DeadLetterReason.MALFORMED, exc)
        if config.is_permanent(exc):
            await self._dead_letter(msg, delivery, DeadLetterReason.PERMANENT_ERROR, exc)
        if delivery.deliveries >= policy.max_attempts:
            await self._dead_letter(msg, delivery, DeadLetterReason.MAX_ATTEMPTS_EXCEEDED, exc)
        delay = exc.delay if isinstance(exc, RetryLater) else None
        if delay is None:
            delay = policy.delay_for(delivery.deliveries)
        config.remember_failure(delivery.key, delivery.received_at)
        config.metrics.retried.add(1, config.metrics.attributes(delivery.subject))
        record_span_event(
            "natspubsub.retry",
            {
                "natspubsub.attempt": delivery.deliveries,
                "natspubsub.delay_s": delay,
                "exception.type": type(exc).__qualname__,
                "exception.message": str(exc)[:500],
            },
        )
        logger.warning(
            "handler failed on attempt %d/%d of event %s on %s; retrying in %.3fs",
            delivery.deliveries,
            policy.max_attempts,
            delivery.event_id(msg),
            delivery.subject,
            delay,
            exc_info=exc,
            extra=delivery.log_fields(msg, delay=delay),
        )
        raise NackMessage(delay=delay)

    async def _dead_letter(
        self,
        msg: StreamMessage[Any],
        delivery: _Delivery,
        reason: DeadLetterReason,
        exc: BaseException | None,
        detail: str | None = None,
    ) -> NoReturn:
        config = self._config
        first = config.remember_failure(delivery.key, delivery.received_at)
        fields = delivery.log_fields(msg, reason=reason.value)
        if config.dlq is None:
            logger.error(
                "event %s on %s terminated (%s); the DLQ is disabled",
                delivery.event_id(msg),
                delivery.subject,
                reason.value,
                exc_info=exc,
                extra=fields,
            )
            config.forget_failure(delivery.key)
            await _terminate(msg, reason.value)
        failure = FailedDelivery(
            subject=delivery.subject,
            body=msg.body,
            headers=msg.headers,
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
        broker = self.context.get("broker")
        try:
            await config.dlq.write(failure, broker.publish)
        except (PublishError, NatsError) as dlq_error:
            delay = config.retry.delay_for(min(delivery.deliveries, config.retry.max_attempts))
            logger.error(
                "event %s on %s could not be dead-lettered (%s: %s); NAK, retry in %.3fs",
                delivery.event_id(msg),
                delivery.subject,
                reason.value,
                dlq_error,
                delay,
                exc_info=exc,
                extra={**fields, "natspubsub_delay": delay},
            )
            raise NackMessage(delay=delay) from dlq_error
        config.forget_failure(delivery.key)
        attributes = {
            **config.metrics.attributes(delivery.subject),
            "natspubsub.reason": reason.value,
        }
        config.metrics.dead_lettered.add(1, attributes)
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
            delivery.event_id(msg),
            delivery.subject,
            delivery.deliveries,
            reason.value,
            exc_info=exc,
            extra=fields,
        )
        await _terminate(msg, reason.value)


class _Delivery:
    """JetStream facts of the current delivery; neutral values for in-memory messages."""

    __slots__ = ("consumer", "deliveries", "received_at", "stream", "stream_seq", "subject")

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.received_at = datetime.now(timezone.utc)
        self.deliveries = 1
        self.stream: str | None = None
        self.stream_seq: int | None = None
        self.consumer: str | None = None

    @classmethod
    def of(cls, msg: StreamMessage[Any]) -> _Delivery:
        raw = msg.raw_message
        delivery = cls(raw.subject)
        try:
            js = raw.metadata
        except (NatsError, AttributeError):  # core NATS or in-memory message
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

    @staticmethod
    def event_id(msg: StreamMessage[Any]) -> str:
        return str(msg.headers.get("Nats-Msg-Id", "?"))

    def log_fields(self, msg: StreamMessage[Any], **more: Any) -> dict[str, Any]:
        fields = {
            "natspubsub_event_id": self.event_id(msg),
            "natspubsub_subject": self.subject,
            "natspubsub_attempt": self.deliveries,
            "natspubsub_stream_seq": self.stream_seq,
        }
        fields.update({f"natspubsub_{key}": value for key, value in more.items()})
        return fields


async def _terminate(msg: StreamMessage[Any], reason: str) -> NoReturn:
    """TERM with a reason, then tell FastStream the message is rejected.

    nats-py's ``term()`` sends no reason; ``+TERM <reason>`` puts it in the server's
    MSG_TERMINATED advisory. ``_ackd`` is set as nats-py's own ``term()`` does, so FastStream's
    reject does not send a second TERM.
    """
    raw = msg.raw_message
    reply = getattr(raw, "reply", "")
    client = getattr(raw, "_client", None)  # None for TestNatsBroker's in-memory messages
    if client is not None and reply.startswith("$JS.ACK.") and not getattr(raw, "_ackd", True):
        await client.publish(reply, b"+TERM " + reason.encode())
        raw._ackd = True
    raise RejectMessage
