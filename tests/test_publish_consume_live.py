"""Publish and consume against a real nats-server: wire format, metadata, de-duplication."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.errors import NoStreamResponseError
from pydantic import BaseModel
from support import NATSPUBSUB_TS_ENVELOPE, consumer_idle, new_broker, running, wait_until

from faststream_natspubsub import (
    CurrentEnvelope,
    EnvelopeError,
    EventMetadata,
    MessageTooLargeError,
    NatsPubsub,
    OutgoingEvent,
    PublishError,
    SubjectError,
)
from faststream_natspubsub.envelope import EnvelopeCodec, parse_timestamp
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats


class Order(BaseModel):
    order_id: str
    total: float


async def test_wire_format_and_handler_metadata(server: EmbeddedNatsServer) -> None:
    # Given an orders app and a payments app subscribed to its order.created
    orders = NatsPubsub(new_broker(server), env="test", app="orders")
    payments = NatsPubsub(new_broker(server), env="test", app="payments")
    received: list[tuple[Order, Any]] = []

    @payments.subscriber("order.created", app="orders")
    async def on_created(order: Order, meta: EventMetadata) -> None:
        received.append((order, meta))

    async with running(orders.broker, payments.broker):
        # When orders publishes with a correlation id
        result = await orders.publish(
            "order.created", Order(order_id="ORD-1", total=9.5), metadata={"correlation_id": "r-1"}
        )
        await wait_until(lambda: len(received) == 1, message="the handler")

        # Then the stored message is an envelope with the Nats-Msg-Id header
        nc = await nats.connect(server.url)
        stored = await nc.jetstream().get_msg(result.stream or "", result.seq)
        await nc.close()

    assert result.subject == "test.orders.order.created"
    assert result.duplicate is False
    envelope = EnvelopeCodec().decode(stored.data or b"")
    assert str(uuid.UUID(envelope.event_id)) == envelope.event_id == result.event_id
    raw = (stored.data or b"").decode()
    occurred = raw.split('"occurred_at":"')[1].split('"')[0]
    assert occurred.endswith("Z")
    assert len(occurred.split(".")[1]) == 4  # three digits of milliseconds and Z
    assert envelope.message == {"order_id": "ORD-1", "total": 9.5}
    assert envelope.metadata["app_name"] == "orders"
    assert envelope.metadata["environment"] == "test"
    assert stored.headers is not None
    assert stored.headers["Nats-Msg-Id"] == result.event_id
    assert parse_timestamp(stored.headers["Nats-Published-At"])

    order, meta = received[0]
    assert order == Order(order_id="ORD-1", total=9.5)
    assert meta.subject == "test.orders.order.created"
    assert meta.topic == "order.created"
    assert meta.event_id == result.event_id
    assert meta.stream == result.stream == "TEST_ORDERS"
    assert meta.stream_seq == result.seq
    assert meta.deliveries == 1
    assert meta.correlation_id == "r-1"
    assert meta.app_name == "orders"
    assert meta.occurred_at == envelope.occurred_at


async def test_same_event_id_twice_is_a_duplicate_and_handled_once(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    calls: list[str] = []

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any], meta: EventMetadata) -> None:
        calls.append(meta.event_id)

    async with running(pubsub.broker):
        first = await pubsub.publish("order.created", {"n": 1}, event_id="evt-1")
        second = await pubsub.publish("order.created", {"n": 1}, event_id="evt-1")
        marker = await pubsub.publish("order.created", {"n": 2})
        js = pubsub.broker.connection.jetstream()
        durable = consumer_name("orders", "test.orders.order.created")
        await wait_until(lambda: len(calls) == 2, message="both distinct events")
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", durable), message="idle")

    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.seq == first.seq
    assert marker.seq == first.seq + 1  # the duplicate was not stored
    assert calls == ["evt-1", marker.event_id]


async def test_natspubsub_typescript_envelope_reaches_a_handler(server: EmbeddedNatsServer) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="billing")
    received: list[Any] = []

    @pubsub.subscriber("order.created", app="orders")
    async def handle(body: dict[str, Any], meta: EventMetadata, envelope: CurrentEnvelope) -> None:
        received.append((body, meta, envelope))

    async with running(pubsub.broker):
        nc = await nats.connect(server.url)
        await nc.jetstream().publish(
            "test.orders.order.created",
            NATSPUBSUB_TS_ENVELOPE,
            headers={
                "Nats-Msg-Id": "0b9b8f3c-1f3e-4a57-b7a5-0c6a86e3a111",
                "topic": "order.created",
            },
        )
        await nc.close()
        await wait_until(lambda: len(received) == 1, message="the handler")

    body, meta, envelope = received[0]
    assert body == {"order_id": "ORD-123", "total": 99.99}
    assert meta.app_name == "orders"
    assert meta.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert meta.topic == "order.created"
    assert meta.event_id == "0b9b8f3c-1f3e-4a57-b7a5-0c6a86e3a111"
    assert envelope.extra["message_type"] == "OrderCreated"


async def test_bad_publishes_raise_typed_errors_and_send_nothing(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(
        new_broker(server), env="test", app="orders", codec=EnvelopeCodec(max_message_size=1_000)
    )
    async with running(pubsub.broker):
        with pytest.raises(SubjectError, match="empty part"):
            await pubsub.publish("order..created", {"a": 1})
        with pytest.raises(SubjectError, match="wildcard"):
            await pubsub.publish("order.*", {"a": 1})
        with pytest.raises(EnvelopeError, match="JSON object"):
            await pubsub.publish("order.created", [1, 2, 3])
        with pytest.raises(EnvelopeError, match="JSON object"):
            await pubsub.publish("order.created", "just text")
        with pytest.raises(MessageTooLargeError):
            await pubsub.publish("order.created", {"blob": "x" * 5_000})
        js = pubsub.broker.connection.jetstream()
        info = await js.stream_info("TEST_ORDERS")
    assert info.state.messages == 0


async def test_publish_without_a_stream_fails_clearly_after_bounded_retries(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    async with running(pubsub.broker):
        await pubsub.broker.connection.jetstream().delete_stream("TEST_ORDERS")
        with pytest.raises(PublishError, match="3 attempts"):
            await pubsub.publish("order.created", {"a": 1}, timeout=0.5)


async def test_publish_many_pipelines_and_reports_every_item(server: EmbeddedNatsServer) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    async with running(pubsub.broker):
        items: list[tuple[str, Any]] = [("order.created", {"n": n}) for n in range(200)]
        items.insert(50, ("bad..topic", {"n": -1}))
        items.insert(100, ("order.created", ["not", "an", "object"]))
        results = await pubsub.publish_many(items, metadata={"correlation_id": "batch-1"})
        js = pubsub.broker.connection.jetstream()
        info = await js.stream_info("TEST_ORDERS")
        last = await js.get_msg("TEST_ORDERS", info.state.last_seq)

    assert len(results) == 202
    assert isinstance(results[50].error, SubjectError)
    assert isinstance(results[100].error, EnvelopeError)
    good = [r for r in results if r.ok]
    assert len(good) == 200
    assert len({r.event_id for r in good}) == 200  # every copy has its own Nats-Msg-Id
    assert sorted(r.seq or 0 for r in good) == list(range(1, 201))
    assert info.state.messages == 200
    assert EnvelopeCodec().decode(last.data or b"").metadata["correlation_id"] == "batch-1"


async def test_one_message_to_several_topics_stores_every_copy(server: EmbeddedNatsServer) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    async with running(pubsub.broker):
        message = {"order_id": "ORD-7"}
        results = await pubsub.publish_many(
            [("order.created", message), ("order.audited", message), ("order.indexed", message)]
        )
    assert [r.duplicate for r in results] == [False, False, False]
    assert len({r.seq for r in results}) == 3


async def test_handler_return_value_and_publisher_are_wrapped_with_causation(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    seen: list[Any] = []
    forward = pubsub.publisher("order.audited")

    @pubsub.subscriber("order.created")
    @pubsub.publisher("order.confirmed")
    async def confirm(body: dict[str, Any], meta: EventMetadata) -> dict[str, Any]:
        await forward.publish({"audit": body["order_id"]})
        return {"confirmed": body["order_id"]}

    @pubsub.subscriber("order.confirmed")
    async def confirmed(body: dict[str, Any], meta: EventMetadata) -> None:
        seen.append(("confirmed", body, meta))

    @pubsub.subscriber("order.audited")
    async def audited(body: dict[str, Any], meta: EventMetadata) -> None:
        seen.append(("audited", body, meta))

    async with running(pubsub.broker):
        origin = await pubsub.publish(
            "order.created", {"order_id": "ORD-2"}, metadata={"correlation_id": "req-9"}
        )
        await wait_until(lambda: len(seen) == 2, message="both follow-up events")

    by_kind = {kind: (body, meta) for kind, body, meta in seen}
    assert by_kind["confirmed"][0] == {"confirmed": "ORD-2"}
    assert by_kind["audited"][0] == {"audit": "ORD-2"}
    for _, meta in by_kind.values():
        assert meta.causation_id == origin.event_id
        assert meta.correlation_id == "req-9"
        assert meta.event_id != origin.event_id


async def test_fan_out_and_subscribing_to_another_apps_topics(server: EmbeddedNatsServer) -> None:
    # Given two apps subscribed to orders' order.created, started before orders itself
    payments = NatsPubsub(new_broker(server), env="test", app="payments")
    shipping = NatsPubsub(new_broker(server), env="test", app="shipping")
    got: dict[str, list[str]] = {"payments": [], "shipping": []}

    @payments.subscriber("order.created", app="orders")
    async def pay(body: dict[str, Any]) -> None:
        got["payments"].append(body["id"])

    @shipping.subscriber("order.*", app="orders")
    async def ship(body: dict[str, Any]) -> None:
        got["shipping"].append(body["id"])

    orders = NatsPubsub(new_broker(server), env="test", app="orders")
    async with running(payments.broker, shipping.broker, orders.broker):
        await orders.publish_many([("order.created", {"id": f"O{n}"}) for n in range(20)])
        await wait_until(
            lambda: len(got["payments"]) == 20 and len(got["shipping"]) == 20, message="fan-out"
        )
    expected = [f"O{n}" for n in range(20)]
    assert got["payments"] == expected  # one worker keeps order
    assert got["shipping"] == expected


async def test_operator_changes_to_a_stream_survive_an_app_restart(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any]) -> None: ...

    async with running(pubsub.broker):
        js = pubsub.broker.connection.jetstream()
        info = await js.stream_info("TEST_ORDERS")
        info.config.max_age = 3600.0
        info.config.duplicate_window = 60.0
        await js.update_stream(info.config)

    restarted = NatsPubsub(new_broker(server), env="test", app="orders")

    @restarted.subscriber("order.created")
    async def handle_again(body: dict[str, Any]) -> None: ...

    @restarted.subscriber("order.shipped", app="shipping")
    async def shipped(body: dict[str, Any]) -> None: ...

    async with running(restarted.broker):
        info = await restarted.broker.connection.jetstream().stream_info("TEST_ORDERS")
    assert info.config.max_age == pytest.approx(3600.0)
    assert info.config.duplicate_window == pytest.approx(60.0)


async def test_consumers_are_durable_pull_with_explicit_ack_and_policy_limits(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="payments")

    @pubsub.subscriber("order.created", app="orders", ack_wait=12.0)
    async def handle(body: dict[str, Any]) -> None: ...

    async with running(pubsub.broker):
        js = pubsub.broker.connection.jetstream()
        durable = consumer_name("payments", "test.orders.order.created")
        info = await js.consumer_info("TEST_ORDERS", durable)
    config = info.config
    assert config.durable_name == durable
    assert config.deliver_subject is None  # pull
    assert config.ack_policy == "explicit"
    assert config.ack_wait == pytest.approx(12.0)
    assert config.max_deliver == pubsub.retry.max_deliver
    assert not config.backoff
    assert config.filter_subject == "test.orders.order.created"


async def test_replicas_are_configurable(server: EmbeddedNatsServer) -> None:
    from faststream_natspubsub import StreamSettings

    pubsub = NatsPubsub(
        new_broker(server), env="test", app="orders", streams=StreamSettings(replicas=3)
    )
    from faststream_natspubsub import TopologyError

    # A single server cannot hold three replicas: the error says so instead of hanging.
    with pytest.raises(TopologyError, match="TEST_ORDERS"):
        async with running(pubsub.broker):
            pass
    assert pubsub.topology.streams["TEST_ORDERS"].settings.replicas == 3


async def test_subscribers_keep_running_alongside_plain_faststream_subjects(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    plain: list[bytes] = []

    @pubsub.broker.subscriber("legacy.subject")
    async def legacy(body: bytes) -> None:
        plain.append(body)

    async with running(pubsub.broker):
        await pubsub.broker.publish(b"raw", "legacy.subject")
        await wait_until(lambda: plain == [b"raw"], message="the plain subscriber")
    await asyncio.sleep(0)


async def test_publish_many_stores_the_headers_a_single_publish_stores(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    async with running(pubsub.broker):
        one = await pubsub.publish("order.created", {"n": 1})
        [many] = await pubsub.publish_many([("order.created", {"n": 2})])
        js = pubsub.broker.connection.jetstream()
        single = await js.get_msg("TEST_ORDERS", one.seq)
        piped = await js.get_msg("TEST_ORDERS", many.seq)
    assert piped.headers is not None and single.headers is not None
    assert piped.headers["Nats-Msg-Id"] == many.event_id
    assert piped.headers["content-type"] == single.headers["content-type"] == "application/json"
    assert "Nats-Published-At" in piped.headers
    assert EnvelopeCodec().decode(piped.data or b"").event_id == many.event_id


async def test_publish_many_with_one_event_id_twice_stores_it_once(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    async with running(pubsub.broker):
        event = OutgoingEvent(message={"n": 1}, event_id="evt-twice")
        results = await pubsub.publish_many([("order.created", event), ("order.created", event)])
    assert [r.ok for r in results] == [True, True]
    assert [r.duplicate for r in results] == [False, True]
    assert results[0].seq == results[1].seq


async def test_publish_many_without_a_stream_fails_each_item_after_its_retries(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    async with running(pubsub.broker):
        await pubsub.broker.connection.jetstream().delete_stream("TEST_ORDERS")
        started = time.monotonic()
        results = await pubsub.publish_many([("order.created", {"n": n}) for n in range(3)])
        elapsed = time.monotonic() - started
    assert all(isinstance(r.error, PublishError) for r in results)
    assert all(isinstance(r.error.__cause__, NoStreamResponseError) for r in results)  # type: ignore[union-attr]
    assert elapsed < 5  # no responders is answered at once: three quick tries, no timeouts


async def test_ids_a_header_would_change_are_refused_instead_of_colliding(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    async with running(pubsub.broker):
        results = await pubsub.publish_many(
            [
                ("order.created", OutgoingEvent(message={"n": 1}, event_id="order-1\ncancel")),
                ("order.created", OutgoingEvent(message={"n": 2}, event_id="order-1 cancel")),
                ("order.created", OutgoingEvent(message={"n": 3}, event_id=" order-2 ")),
            ]
        )
        with pytest.raises(EnvelopeError, match="event_id"):
            await pubsub.publish("order.created", {"n": 4}, event_id="order-2\t")
        with pytest.raises(EnvelopeError, match="correlation_id"):
            await pubsub.publish("order.created", {"n": 5}, metadata={"correlation_id": 42})
        info = await pubsub.broker.connection.jetstream().stream_info("TEST_ORDERS")

    # Before: all five were "ok", and only two were stored (the others shared their ids)
    assert [r.ok for r in results] == [False, True, False]
    assert isinstance(results[0].error, EnvelopeError)
    assert (results[1].seq, results[1].duplicate) == (1, False)
    assert info.state.messages == 1


async def test_publish_counts_the_headers_against_max_payload_and_keeps_the_connection() -> None:
    # Before: a body under max_payload whose headers took it over was sent; the server
    # answered "Maximum Payload Violation" and nats-py closed the connection for good.
    async with EmbeddedNatsServer(config="max_payload: 4096") as small:
        pubsub = NatsPubsub(new_broker(small), env="test", app="orders")
        async with running(pubsub.broker):
            body = {"blob": "x" * 3700}
            payload, _ = pubsub.runtime.envelope.codec.encode(
                pubsub.runtime.envelope.build_envelope(
                    "order.created", OutgoingEvent(message=body), None
                )
            )
            assert len(payload) < 4096  # the body alone fits
            with pytest.raises(MessageTooLargeError, match="bytes of headers") as refused:
                await pubsub.publish("order.created", body)
            [many] = await pubsub.publish_many([("order.created", body)])
            after = await pubsub.publish("order.created", {"n": 2})
    assert refused.value.limit == 4096 and refused.value.size > 4096
    assert isinstance(many.error, MessageTooLargeError)
    assert after.seq == 1  # nothing was stored before, and the connection is still up


async def test_publish_many_retries_an_item_the_server_answers_503_for(
    server: EmbeddedNatsServer,
) -> None:
    # A JetStream leader election answers "503 temporarily unavailable": publish retries it
    # with the same id, and so must publish_many (it gave up on it at once before).
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
    async with running(pubsub.broker):
        await pubsub.broker.connection.jetstream().delete_stream("TEST_ORDERS")
        answers = [
            {"error": {"code": 503, "err_code": 10008, "description": "unavailable"}},
            {"stream": "TEST_ORDERS", "seq": 7},
        ]
        seen: list[str] = []
        responder = await nats.connect(server.url)

        async def answer(msg: Msg) -> None:
            seen.append(msg.headers["Nats-Msg-Id"] if msg.headers else "")
            await msg.respond(json.dumps(answers[len(seen) - 1]).encode())

        await responder.subscribe("test.orders.order.created", cb=answer)
        await responder.flush()
        try:
            [result] = await pubsub.publish_many([("order.created", {"n": 1})])
        finally:
            await responder.close()
    assert result.ok, result.error
    assert result.seq == 7
    assert seen == [result.event_id, result.event_id]  # the retry kept the id


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _CountingCodec(EnvelopeCodec):
    encoded: list[int] = dataclasses.field(default_factory=list)

    def encode(self, data: dict[str, Any]) -> tuple[bytes, bool]:
        self.encoded.append(1)
        return EnvelopeCodec.encode(self, data)


async def test_a_publish_with_headers_far_below_max_payload_is_encoded_once(
    server: EmbeddedNatsServer,
) -> None:
    # Headers the caller gives (FastStream's telemetry adds a traceparent) are counted
    # against max_payload; the envelope is encoded again only when it does not fit
    codec = _CountingCodec()
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders", codec=codec)
    async with running(pubsub.broker):
        await pubsub.publish("order.created", {"n": 1}, headers={"traceparent": "00-ab-cd-01"})
    assert len(codec.encoded) == 1


async def test_publish_many_refuses_an_item_over_max_payload_and_keeps_the_connection() -> None:
    async with EmbeddedNatsServer(config="max_payload: 4096") as small:
        pubsub = NatsPubsub(new_broker(small), env="test", app="orders")
        async with running(pubsub.broker):
            results = await pubsub.publish_many(
                [("order.created", {"n": 1}), ("order.created", {"blob": "x" * 5000})]
            )
            after = await pubsub.publish("order.created", {"n": 2})
    assert results[0].ok
    assert isinstance(results[1].error, MessageTooLargeError)
    assert after.seq == 2  # the server did not drop the connection for a protocol violation
