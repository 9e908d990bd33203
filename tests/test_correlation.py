"""One correlation id: the envelope's metadata.correlation_id is FastStream's correlation_id,
in both directions, and carries over from an event to what its handler publishes."""

from __future__ import annotations

from typing import Any

import pytest
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage as Message
from support import new_broker, running, wait_until

from faststream_natspubsub import CurrentEnvelope, EventMetadata, NatsPubsub, OutgoingEvent
from faststream_natspubsub.testing import EmbeddedNatsServer, TestNatsPubsub


def app_with_chain() -> tuple[NatsPubsub, list[tuple[str, str, str]]]:
    """orders: order.created -> (return value) order.confirmed -> recorded."""
    pubsub = NatsPubsub(NatsBroker(), env="t", app="orders")
    seen: list[tuple[str, str, str]] = []  # (topic, meta.correlation_id, message.correlation_id)

    @pubsub.subscriber("order.created")
    @pubsub.publisher("order.confirmed")
    async def confirm(body: dict[str, Any], meta: EventMetadata, msg: Message) -> dict[str, Any]:
        seen.append(("order.created", meta.correlation_id, msg.correlation_id))
        return {"id": body["id"]}

    @pubsub.subscriber("order.confirmed")
    async def record(body: dict[str, Any], meta: EventMetadata, msg: Message) -> None:
        seen.append(("order.confirmed", meta.correlation_id, msg.correlation_id))

    return pubsub, seen


async def test_faststreams_correlation_id_on_publish_becomes_the_envelopes() -> None:
    pubsub, seen = app_with_chain()
    async with TestNatsPubsub(pubsub):
        await pubsub.broker.publish({"id": 1}, "t.orders.order.created", correlation_id="x-1")
    # The handler sees one id both ways, and the event its return value became carries it on
    assert seen == [("order.created", "x-1", "x-1"), ("order.confirmed", "x-1", "x-1")]


async def test_publish_takes_a_correlation_id_argument() -> None:
    pubsub, seen = app_with_chain()
    async with TestNatsPubsub(pubsub):
        await pubsub.publish("order.created", {"id": 1}, correlation_id="req-7")
        await pubsub.publish_many([("order.created", {"id": 2})], correlation_id="req-8")
    assert [c for t, c, _ in seen if t == "order.confirmed"] == ["req-7", "req-8"]


async def test_an_event_that_names_no_correlation_starts_its_own_chain() -> None:
    pubsub, seen = app_with_chain()
    envelopes: list[str] = []

    @pubsub.subscriber("order.audited")
    async def audit(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        envelopes.append(envelope.event_id)

    async with TestNatsPubsub(pubsub):
        result = await pubsub.publish("order.created", {"id": 1})
        # A hand-made event without metadata (as NatsPubsub 1.0 sends them)
        await pubsub.broker.publish(
            OutgoingEvent(message={"id": 2}, event_id="evt-2"), "t.orders.order.audited"
        )
    assert seen[0][1:] == (result.event_id, result.event_id)
    assert seen[1][1] == result.event_id  # the confirmation continues that chain
    assert envelopes == ["evt-2"]


async def test_a_handler_publishing_continues_the_events_chain_unless_told_otherwise() -> None:
    pubsub = NatsPubsub(NatsBroker(), env="t", app="orders")
    got: list[tuple[str, str | None]] = []

    @pubsub.subscriber("order.created")
    async def fan_out(body: dict[str, Any]) -> None:
        await pubsub.publish("order.shipped", {})
        await pubsub.publish("order.billed", {}, correlation_id="billing-run-3")

    @pubsub.subscriber("order.*")
    async def watch(body: dict[str, Any], meta: EventMetadata) -> None:
        got.append((meta.topic, meta.correlation_id))

    async with TestNatsPubsub(pubsub):
        await pubsub.publish("order.created", {}, correlation_id="req-1")
    assert sorted(got) == [
        ("order.billed", "billing-run-3"),
        ("order.created", "req-1"),
        ("order.shipped", "req-1"),
    ]


@pytest.mark.nats
async def test_live_the_correlation_id_header_and_the_envelope_agree(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="t", app="orders")
    seen: list[tuple[str, str]] = []

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any], meta: EventMetadata, msg: Message) -> None:
        seen.append((meta.correlation_id, msg.headers.get("correlation_id", "")))

    async with running(pubsub.broker):
        await pubsub.publish("order.created", {"id": 1}, correlation_id="one")
        await pubsub.publish_many([("order.created", {"id": 2})], correlation_id="two")
        await pubsub.broker.publish(
            {"id": 3}, "t.orders.order.created", stream="T_ORDERS", correlation_id="three"
        )
        await wait_until(lambda: len(seen) == 3, message="three events")
    assert sorted(seen) == [("one", "one"), ("three", "three"), ("two", "two")]
