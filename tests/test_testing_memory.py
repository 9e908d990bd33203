"""TestNatsPubsub: failure paths in memory, without a server."""

from __future__ import annotations

import time
from typing import Any

from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import (
    EventMetadata,
    NatsPubsub,
    PermanentError,
    RetryLater,
    RetryPolicy,
    SubjectError,
)
from faststream_natspubsub.testing import TestNatsPubsub


class Order(BaseModel):
    order_id: str


def make_pubsub(**kwargs: Any) -> NatsPubsub:
    return NatsPubsub(NatsBroker(), env="test", app="orders", **kwargs)


async def test_an_always_failing_handler_ends_in_the_dlq_after_max_attempts() -> None:
    # Given a handler that always fails and the default policy
    pubsub = make_pubsub()
    deliveries: list[int] = []

    @pubsub.subscriber("order.created")
    async def handle(order: Order, meta: EventMetadata) -> None:
        deliveries.append(meta.deliveries)
        raise ConnectionError("payment provider down")

    # When one event is published in memory
    started = time.perf_counter()
    async with TestNatsPubsub(pubsub) as tp:
        result = await pubsub.publish("order.created", Order(order_id="A"))
    elapsed = time.perf_counter() - started

    # Then after 5 attempts it is in the DLQ, with the policy's delays recorded, not slept
    assert deliveries == [1, 2, 3, 4, 5]
    assert tp.delays == [1, 2, 5, 10]
    assert len(tp.dead_letters) == 1
    record = tp.dead_letters[0]
    assert record.event_id == result.event_id
    assert record.reason == "max_attempts_exceeded"
    assert record.attempts == 5
    assert record.error_type == "ConnectionError"
    assert elapsed < sum(tp.delays) / 2  # 18 s of delays were recorded, not slept


async def test_a_handler_that_recovers_is_not_dead_lettered() -> None:
    pubsub = make_pubsub(retry=RetryPolicy(backoff=(0.5,)))
    deliveries: list[int] = []

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any], meta: EventMetadata) -> None:
        deliveries.append(meta.deliveries)
        if meta.deliveries < 3:
            raise TimeoutError

    async with TestNatsPubsub(pubsub) as tp:
        await pubsub.publish("order.created", {"id": 1})
    assert deliveries == [1, 2, 3]
    assert tp.delays == [0.5, 1.0]
    assert tp.dead_letters == []


async def test_permanent_errors_and_retry_later_in_memory() -> None:
    pubsub = make_pubsub()
    calls: list[str] = []

    @pubsub.subscriber("order.created")
    async def created(body: dict[str, Any]) -> None:
        calls.append("created")
        raise PermanentError("cannot fulfil")

    @pubsub.subscriber("order.paid")
    async def paid(body: dict[str, Any], meta: EventMetadata) -> None:
        calls.append("paid")
        if meta.deliveries == 1:
            raise RetryLater(delay=0.8)

    async with TestNatsPubsub(pubsub) as tp:
        await pubsub.publish("order.created", {"id": 1})
        await pubsub.publish("order.paid", {"id": 1})
    assert calls == ["created", "paid", "paid"]
    assert tp.delays == [0.8]
    assert [r.reason for r in tp.dead_letters] == ["permanent_error"]


async def test_validation_failures_are_captured_as_permanent() -> None:
    pubsub = make_pubsub()

    @pubsub.subscriber("order.created")
    async def handle(order: Order) -> None: ...

    async with TestNatsPubsub(pubsub) as tp:
        await pubsub.publish("order.created", {"wrong": "shape"})
    assert [r.error_type for r in tp.dead_letters] == ["ValidationError"]
    assert tp.delays == []


async def test_publish_many_reports_per_item_in_memory_and_the_broker_is_restored() -> None:
    pubsub = make_pubsub()
    seen: list[Any] = []

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any]) -> None:
        seen.append(body)

    async with TestNatsPubsub(pubsub):
        results = await pubsub.publish_many(
            [("order.created", {"n": 1}), ("bad..topic", {}), ("order.created", {"n": 2})]
        )
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, SubjectError)
    assert seen == [{"n": 1}, {"n": 2}]
    assert pubsub.dead_letters is not None
    assert "write" not in vars(pubsub.dead_letters)
