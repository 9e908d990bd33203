"""The plugin under FastStream's TestNatsBroker: no server at all."""

from __future__ import annotations

from typing import Any

import pytest
from faststream.nats import NatsBroker, TestNatsBroker
from pydantic import BaseModel

from faststream_natspubsub import (
    BatchMetadata,
    BatchSettings,
    ConfigurationError,
    EventMetadata,
    FailureMiddleware,
    MessageTooLargeError,
    NatsPubsub,
)
from faststream_natspubsub.envelope import EnvelopeCodec


class Order(BaseModel):
    order_id: str


async def test_publish_and_handle_in_memory_with_metadata() -> None:
    broker = NatsBroker()
    pubsub = NatsPubsub(broker, env="test", app="orders")
    seen: list[tuple[Order, EventMetadata]] = []

    @pubsub.subscriber("order.created")
    async def handle(order: Order, meta: EventMetadata) -> None:
        seen.append((order, meta))

    async with TestNatsBroker(broker):
        result = await pubsub.publish(
            "order.created", Order(order_id="A"), metadata={"correlation_id": "c"}
        )
        handle.mock.assert_called_once()  # type: ignore[attr-defined]
        received = handle.mock.call_args.args[0]  # type: ignore[attr-defined]

    assert seen[0][0] == Order(order_id="A")
    meta = seen[0][1]
    assert meta.event_id == result.event_id
    assert meta.correlation_id == "c"
    assert meta.deliveries == 1
    assert meta.stream is None  # no JetStream in memory
    assert received == {"order_id": "A"}  # the mock sees what the handler got


async def test_typed_errors_are_raised_in_memory_too() -> None:
    broker = NatsBroker()
    pubsub = NatsPubsub(broker, env="test", app="orders", codec=EnvelopeCodec(max_message_size=50))

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any]) -> None: ...

    async with TestNatsBroker(broker):
        with pytest.raises(MessageTooLargeError):
            await pubsub.publish("order.created", {"blob": "x" * 100})
        handle.mock.assert_not_called()  # type: ignore[attr-defined]


async def test_publish_many_works_under_the_plain_test_broker() -> None:
    broker = NatsBroker()
    pubsub = NatsPubsub(broker, env="test", app="orders")

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any]) -> None: ...

    async with TestNatsBroker(broker):
        results = await pubsub.publish_many([("order.created", {"n": 1}), ("bad..x", {})])
        handle.mock.assert_called_once_with({"n": 1})  # type: ignore[attr-defined]
    assert [r.ok for r in results] == [True, False]


def test_two_subscribers_cannot_share_a_durable_by_accident() -> None:
    pubsub = NatsPubsub(NatsBroker(), env="test", app="orders")

    @pubsub.subscriber("order.created")
    async def first(body: dict[str, Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="durable"):

        @pubsub.subscriber("order.created")
        async def second(body: dict[str, Any]) -> None: ...

    @pubsub.subscriber("order.created", durable="orders-audit")
    async def third(body: dict[str, Any]) -> None: ...


def test_a_hand_built_failure_middleware_normalises_its_env() -> None:
    assert FailureMiddleware(env=" Prod ").subject_prefix == "prod."


@pytest.mark.parametrize("inbox", ["memory", "kv"])
async def test_the_inbox_skips_a_republished_event_in_memory(inbox: str) -> None:
    # inbox="kv" has no bucket under TestNatsBroker: its ids are kept in memory there
    broker = NatsBroker()
    pubsub = NatsPubsub(broker, env="test", app="orders", inbox=inbox)
    handled: list[str] = []

    @pubsub.subscriber("order.created")
    async def handle(order: Order, meta: EventMetadata) -> None:
        handled.append(meta.event_id)

    @pubsub.subscriber("order.created", durable="orders-audit", batch=BatchSettings())
    async def audit(orders: list[Order], meta: BatchMetadata) -> None:
        handled.extend(f"audit:{m.event_id}" for m in meta)

    async with TestNatsBroker(broker):
        await pubsub.publish("order.created", Order(order_id="A"), event_id="evt-1")
        await pubsub.publish("order.created", Order(order_id="A"), event_id="evt-1")
        await pubsub.publish("order.created", Order(order_id="B"), event_id="evt-2")

    assert sorted(handled) == ["audit:evt-1", "audit:evt-2", "evt-1", "evt-2"]
    assert pubsub.inbox is not None
    assert pubsub.inbox.duplicates == 2
