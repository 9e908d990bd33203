"""Failure paths without a server: ``TestNatsPubsub`` on top of FastStream's ``TestNatsBroker``.

``TestNatsBroker`` runs handlers in memory but has no JetStream: a NAK does nothing, there
is no delivery count, and nothing stores dead letters. Here a NAKed event is handed to its
subscriber again at once with the delivery count increased, the delay it asked for is
recorded instead of slept, and dead-letter records are captured::

    async with TestNatsPubsub(pubsub) as tp:
        await pubsub.publish("order.created", {"id": 1})
    assert tp.delays == [1, 2, 5, 10]
    assert tp.dead_letters[0].reason == "max_attempts_exceeded"
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from faststream import BaseMiddleware
from faststream.exceptions import NackMessage
from faststream.nats import TestNatsBroker

from ..compat import current_subscriber, new_in_memory_message
from ..host import BrokerHost

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from faststream import ContextRepo
    from faststream.message import StreamMessage
    from typing_extensions import Self

    from ..dlq import DeadLetterRecord, DeadLetterWriter, FailedDelivery
    from ..facade import NatsPubsub

__all__ = ("Redelivery", "TestNatsPubsub")


@dataclass(frozen=True, slots=True)
class Redelivery:
    """One NAK seen in memory: which event, after which delivery, with which delay."""

    subject: str
    deliveries: int
    """The delivery that was NAKed (1 for the first)."""
    delay: float | None
    """Seconds the NAK asked for; ``None`` for "at once"."""


class TestNatsPubsub:
    """Async context manager: ``TestNatsBroker`` plus redelivery and DLQ capture.

    It covers every NatsPubsub app on ``pubsub``'s broker: a test of several services on one
    broker sees all their redeliveries and dead letters.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, pubsub: NatsPubsub, **test_broker_kwargs: Any) -> None:
        self.pubsub = pubsub
        self.redeliveries: list[Redelivery] = []
        self.dead_letters: list[DeadLetterRecord] = []
        self._sequences = itertools.count(1)
        self._test_broker = TestNatsBroker(pubsub.broker, **test_broker_kwargs)
        self._restore: list[Callable[[], None]] = []

    @property
    def delays(self) -> list[float]:
        """Delays (seconds) of every NAK so far, in order; 0.0 for a NAK "at once"."""
        return [r.delay if r.delay is not None else 0.0 for r in self.redeliveries]

    async def __aenter__(self) -> Self:
        broker = self.pubsub.broker
        # Installed once per broker and switched off on exit: FastStream has no public way
        # to remove a middleware again.
        redelivery = next(
            (m for m in broker.middlewares if isinstance(m, _RedeliveryMiddleware)), None
        )
        if redelivery is None:
            redelivery = _RedeliveryMiddleware()
            broker.insert_middleware(redelivery)
        redelivery.tp = self
        self._restore.append(lambda: setattr(redelivery, "tp", None))
        for app in BrokerHost.of(broker).apps:
            if app.dead_letters is not None:
                self._capture(app.dead_letters)
        await self._test_broker.__aenter__()
        return self

    def _capture(self, writer: DeadLetterWriter) -> None:
        original_write = writer.write

        async def capture(failure: FailedDelivery, publish: Any) -> DeadLetterRecord:
            record = await original_write(failure, publish)
            self.dead_letters.append(replace(record, dlq_seq=len(self.dead_letters) + 1))
            return record

        writer.write = capture  # type: ignore[method-assign]
        self._restore.append(lambda: delattr(writer, "write"))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._test_broker.__aexit__(exc_type, exc, tb)
        finally:
            while self._restore:
                self._restore.pop()()

    def next_sequence(self) -> int:
        """A stream sequence for a message entering the fake stream."""
        return next(self._sequences)


class _RedeliveryMiddleware:
    """Outermost: gives in-memory messages a JetStream reply subject and redelivers NAKs."""

    def __init__(self) -> None:
        self.tp: TestNatsPubsub | None = None

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware:
        if self.tp is None:
            return BaseMiddleware(msg, context=context)  # outside TestNatsPubsub: a no-op
        return _Redeliver(msg, context=context, tp=self.tp)


class _Redeliver(BaseMiddleware):
    __slots__ = ("_nak", "_tp")

    def __init__(self, msg: Any, /, *, context: ContextRepo, tp: TestNatsPubsub) -> None:
        super().__init__(msg, context=context)
        self._tp = tp
        self._nak: Redelivery | None = None

    async def on_receive(self) -> None:
        raw: Any = self.msg
        reply = getattr(raw, "reply", None)
        if reply == "" and hasattr(raw, "subject"):
            plan = BrokerHost.of(self._tp.pubsub.broker).plan_for(current_subscriber(self.context))
            stream = plan.stream if plan is not None else "MEMORY"
            durable = plan.durable if plan is not None else "memory"
            seq = self._tp.next_sequence()
            # What JetStream puts in a delivery's reply subject; nats-py reads metadata from it.
            raw.reply = f"$JS.ACK.{stream}.{durable}.1.{seq}.{seq}.{time.time_ns()}.0"

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        try:
            return await call_next(msg)
        except NackMessage as nak:
            raw = msg.raw_message
            deliveries = raw.metadata.num_delivered if raw.reply else 1
            self._nak = Redelivery(raw.subject, deliveries, nak.extra_options.get("delay"))
            raise

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        nak = self._nak
        if nak is None:
            return False
        self._tp.redeliveries.append(nak)
        subscriber = current_subscriber(self.context)
        plan = BrokerHost.of(self._tp.pubsub.broker).plan_for(subscriber)
        retry = plan.runtime.failure.retry if plan is not None else self._tp.pubsub.retry
        if nak.deliveries >= retry.max_deliver:
            return False  # the server would give up here too
        raw: Any = self.msg
        again = new_in_memory_message(
            subject=raw.subject,
            reply=_next_delivery(raw.reply),
            data=raw.data,
            headers=dict(raw.headers or {}),
        )
        await subscriber.process_message(again)
        return False


def _next_delivery(reply: str) -> str:
    """The same reply subject with the delivery count (5th token) plus one."""
    tokens = reply.split(".")
    tokens[4] = str(int(tokens[4]) + 1)
    return ".".join(tokens)
