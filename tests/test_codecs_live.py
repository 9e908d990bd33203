"""Mixed-codec fleets on a real server: publish, consume, retry, DLQ, replay, inbox, batch."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from support import NATSPUBSUB_TS_ENVELOPE, consumer_idle, new_broker, running, wait_until
from test_cli import natspubsub

from faststream_natspubsub import (
    BatchSettings,
    DeadLetterQueue,
    EventMetadata,
    MsgpackCodec,
    NatsPubsub,
    PermanentError,
    ProtobufCodec,
    ProtobufMessage,
    RetryPolicy,
)
from faststream_natspubsub.codecs import JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE, envelope_pb2
from faststream_natspubsub.codecs import PROTOBUF_CONTENT_TYPE as PROTOBUF
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import orders_pb2

pytestmark = pytest.mark.nats


class Order(BaseModel):
    order_id: str
    quantity: int = 0


def app(server: EmbeddedNatsServer, name: str, codec: Any = None, **kwargs: Any) -> NatsPubsub:
    return NatsPubsub(new_broker(server), env="test", app=name, codec=codec, **kwargs)


async def stored(pubsub: NatsPubsub, stream: str, seq: int) -> tuple[bytes, dict[str, str]]:
    raw = await pubsub.broker.connection.jetstream().get_msg(stream, seq)
    return raw.data or b"", dict(raw.headers or {})


def dlq_of(pubsub: NatsPubsub) -> DeadLetterQueue:
    return DeadLetterQueue(pubsub.broker.connection.jetstream(), env=pubsub.env, app=pubsub.app)


@pytest.mark.parametrize(
    ("codec", "content_type"),
    [(ProtobufCodec(), PROTOBUF), (MsgpackCodec(), MSGPACK_CONTENT_TYPE)],
)
async def test_an_app_on_another_codec_and_a_json_app_read_each_other(
    server: EmbeddedNatsServer, codec: Any, content_type: str
) -> None:
    # Given "orders" writing with the codec and "shipping" writing JSON
    orders, shipping = app(server, "orders", codec), app(server, "shipping")
    seen: dict[str, tuple[Order, EventMetadata]] = {}

    @shipping.subscriber("order.placed", app="orders")
    async def ship(order: Order, meta: EventMetadata) -> None:
        seen["shipping"] = (order, meta)

    @orders.subscriber("order.shipped", app="shipping")
    async def shipped(order: Order, meta: EventMetadata) -> None:
        seen["orders"] = (order, meta)

    # When each publishes a pydantic model
    async with running(orders.broker, shipping.broker):
        placed = await orders.publish("order.placed", Order(order_id="A", quantity=2))
        sent = await shipping.publish("order.shipped", Order(order_id="A"))
        await wait_until(lambda: len(seen) == 2, message="both apps' handlers")
        placed_bytes, placed_headers = await stored(orders, "TEST_ORDERS", placed.seq or 0)

    # Then the other app's handler got its model and metadata, whatever the codec
    order, meta = seen["shipping"]
    assert order == Order(order_id="A", quantity=2)
    assert meta.event_id == placed.event_id
    assert meta.app_name == "orders"
    assert meta.headers["content-type"] == content_type
    assert placed_headers["content-type"] == content_type
    assert not placed_bytes.startswith(b"{")  # not JSON on the wire
    order, meta = seen["orders"]
    assert (order.order_id, meta.event_id) == ("A", sent.event_id)
    assert meta.headers["content-type"] == JSON_CONTENT_TYPE


async def test_a_protobuf_message_reaches_typed_and_pydantic_handlers(
    server: EmbeddedNatsServer,
) -> None:
    # Given a handler typed with the generated class in each app, and a pydantic one
    orders, audit = app(server, "orders", ProtobufCodec()), app(server, "audit")
    typed: list[orders_pb2.OrderPlaced] = []
    models: list[Order] = []

    @orders.subscriber("order.placed")
    async def protobuf_handler(order: orders_pb2.OrderPlaced) -> None:
        typed.append(order)

    @audit.subscriber("order.placed", app="orders")
    async def model_handler(order: Order) -> None:
        models.append(order)

    @audit.subscriber("order.imported")
    async def json_to_protobuf(order: orders_pb2.OrderPlaced) -> None:
        typed.append(order)

    placed = orders_pb2.OrderPlaced(order_id="P-1", customer_id="C", quantity=3, total=9.0)
    async with running(orders.broker, audit.broker):
        # When a protobuf message is published, and a JSON one for a protobuf-typed handler
        result = await orders.publish("order.placed", placed)
        await audit.publish("order.imported", {"order_id": "J-1", "quantity": 4})
        await wait_until(lambda: len(typed) == 2 and len(models) == 1, message="three handlers")
        data, _ = await stored(orders, "TEST_ORDERS", result.seq or 0)

    # Then the message rode as protobuf bytes and each handler got what it asked for
    wire = envelope_pb2.Envelope.FromString(data)
    assert wire.message_content_type == "application/protobuf; proto=orders.v1.OrderPlaced"
    assert wire.message == placed.SerializeToString()
    assert placed in typed
    assert orders_pb2.OrderPlaced(order_id="J-1", quantity=4) in typed
    assert models == [Order(order_id="P-1", quantity=3)]


async def test_protobuf_events_retry_dead_letter_and_replay_unchanged(
    server: EmbeddedNatsServer,
) -> None:
    # Given a protobuf publisher and a JSON consumer whose handler always fails
    orders = app(server, "orders", ProtobufCodec())
    billing = app(server, "billing", retry=RetryPolicy(max_attempts=2, backoff=(0.2,)))
    attempts: list[int] = []
    fixed = False

    @billing.subscriber("order.placed", app="orders")
    async def charge(order: Order, meta: EventMetadata) -> None:
        attempts.append(meta.deliveries)
        if not fixed:
            raise ConnectionError("payment provider down")

    async with running(orders.broker, billing.broker):
        published = await orders.publish("order.placed", Order(order_id="R-1"))
        original, _ = await stored(orders, "TEST_ORDERS", published.seq or 0)
        dlq = dlq_of(billing)
        await wait_until(lambda: dlq.list(), message="a DLQ record")

        # Then the record keeps the original bytes, their content type and the event id
        [record] = await dlq.list()
        assert attempts == [1, 2]
        assert record.reason == "max_attempts_exceeded"
        assert record.event_id == published.event_id
        assert record.content_type == PROTOBUF
        assert record.envelope is None
        assert record.original_bytes == original

        # When the record is replayed after the fix
        fixed = True
        replay = await dlq.replay(record)
        await wait_until(lambda: len(attempts) == 3, message="the replayed event")
        replayed, headers = await stored(orders, "TEST_ORDERS", replay.seq or 0)

    # Then the same bytes and content type were published again
    assert replayed == original
    assert headers["content-type"] == PROTOBUF
    assert replay.event_id == published.event_id


async def test_malformed_protobuf_is_dead_lettered_at_once_with_its_bytes(
    server: EmbeddedNatsServer,
) -> None:
    billing = app(server, "billing")
    handled: list[Any] = []

    @billing.subscriber("order.placed")
    async def charge(body: dict[str, Any]) -> None:
        handled.append(body)

    async with running(billing.broker):
        js = billing.broker.connection.jetstream()
        await js.publish(
            "test.billing.order.placed", b"\xff\xff", headers={"content-type": PROTOBUF}
        )
        await wait_until(lambda: dlq_of(billing).list(), message="a DLQ record")
        [record] = await dlq_of(billing).list()

    assert handled == []
    assert record.reason == "malformed"
    assert record.original_bytes == b"\xff\xff"
    assert record.content_type == PROTOBUF
    assert "not a protobuf envelope" in (record.error_message or "")


async def test_the_inbox_skips_a_protobuf_event_seen_before(server: EmbeddedNatsServer) -> None:
    # Given a consumer with an inbox
    orders = app(server, "orders", ProtobufCodec())
    billing = app(server, "billing", inbox="memory")
    handled: list[str] = []

    @billing.subscriber("order.placed", app="orders")
    async def charge(order: Order, meta: EventMetadata) -> None:
        handled.append(meta.event_id)

    async with running(orders.broker, billing.broker):
        published = await orders.publish("order.placed", Order(order_id="I-1"))
        original, headers = await stored(orders, "TEST_ORDERS", published.seq or 0)
        await wait_until(lambda: len(handled) == 1, message="the first delivery")
        # When the same event arrives again past JetStream's de-duplication
        js = orders.broker.connection.jetstream()
        await js.publish(
            "test.orders.order.placed",
            original,
            headers={"content-type": headers["content-type"], "Nats-Msg-Id": "another-id"},
        )
        durable = consumer_name("billing", "test.orders.order.placed")
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", durable), message="acked")
        info = await js.consumer_info("TEST_ORDERS", durable)

    # Then the handler ran once and the copy was acknowledged
    assert handled == [published.event_id]
    assert info.delivered.stream_seq == 2


async def test_publish_many_in_protobuf_is_read_in_batches_by_a_json_app(
    server: EmbeddedNatsServer,
) -> None:
    # Given a protobuf publisher and batch consumers: pydantic items and protobuf items
    orders = app(server, "orders", ProtobufCodec())
    billing = app(server, "billing")
    models: list[Order] = []
    typed: list[orders_pb2.OrderPlaced] = []

    @billing.subscriber("order.placed", app="orders", batch=BatchSettings(max_wait=0.2))
    async def charge(items: list[Order]) -> None:
        models.extend(items)

    @orders.subscriber("order.placed", batch=BatchSettings(max_wait=0.2))
    async def audit(items: list[ProtobufMessage[orders_pb2.OrderPlaced]]) -> None:
        typed.extend(items)

    async with running(orders.broker, billing.broker):
        # When many are published pipelined, pydantic models and protobuf messages mixed
        items: list[tuple[str, Any]] = [
            ("order.placed", Order(order_id=f"M-{i}", quantity=i)) for i in range(20)
        ]
        items += [("order.placed", orders_pb2.OrderPlaced(order_id="PB", quantity=7))]
        results = await orders.publish_many(items)
        await wait_until(lambda: len(models) == 21 and len(typed) == 21, message="all items")
        _, headers = await stored(orders, "TEST_ORDERS", results[0].seq or 0)

    # Then every item was stored as protobuf and reached both handlers in its own form
    assert all(result.ok for result in results)
    assert headers["content-type"] == PROTOBUF
    assert sorted(m.order_id for m in models) == sorted([f"M-{i}" for i in range(20)] + ["PB"])
    assert orders_pb2.OrderPlaced(order_id="PB", quantity=7) in typed
    assert orders_pb2.OrderPlaced(order_id="M-5", quantity=5) in typed


async def test_a_protobuf_app_reads_natspubsub_1_0_json_without_a_content_type(
    server: EmbeddedNatsServer,
) -> None:
    orders = app(server, "orders", ProtobufCodec())
    received: asyncio.Queue[tuple[dict[str, Any], EventMetadata]] = asyncio.Queue()

    @orders.subscriber("order.created")
    async def handle(body: dict[str, Any], meta: EventMetadata) -> None:
        await received.put((body, meta))

    async with running(orders.broker):
        js = orders.broker.connection.jetstream()
        await js.publish("test.orders.order.created", NATSPUBSUB_TS_ENVELOPE)
        body, meta = await asyncio.wait_for(received.get(), timeout=10)

    assert body == {"order_id": "ORD-123", "total": 99.99}
    assert meta.app_name == "orders"
    assert "content-type" not in meta.headers


async def test_a_permanent_failure_of_a_msgpack_event_keeps_its_bytes(
    server: EmbeddedNatsServer,
) -> None:
    events = app(server, "events", MsgpackCodec())

    @events.subscriber("thing.happened")
    async def handle(body: dict[str, Any]) -> None:
        raise PermanentError("cannot handle this")

    async with running(events.broker):
        published = await events.publish("thing.happened", {"n": 1})
        original, _ = await stored(events, "TEST_EVENTS", published.seq or 0)
        await wait_until(lambda: dlq_of(events).list(), message="a DLQ record")
        [record] = await dlq_of(events).list()

    assert record.reason == "permanent_error"
    assert record.content_type == MSGPACK_CONTENT_TYPE
    assert record.event_id == published.event_id
    assert record.original_bytes == original


@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_dlq_show_decodes_a_protobuf_record(server: EmbeddedNatsServer) -> None:
    # Given a protobuf event carrying a protobuf message, dead-lettered
    orders = app(server, "orders", ProtobufCodec())

    @orders.subscriber("order.placed")
    async def handle(order: orders_pb2.OrderPlaced) -> None:
        raise PermanentError("bad order")

    async with running(orders.broker):
        placed = orders_pb2.OrderPlaced(order_id="S-1", quantity=2)
        published = await orders.publish("order.placed", placed)
        await wait_until(lambda: dlq_of(orders).list(), message="a DLQ record")
        # When an operator shows it
        args = ("dlq", "show", published.event_id, "--servers", server.url)
        scope = ("--env", "test", "--app", "orders")
        text = await natspubsub(*args, *scope, "--import", "examples.orders_pb2")
        as_json = await natspubsub(*args, *scope, "--json")

    # Then the envelope and the message inside are decoded for display
    assert text.code == 0, text
    assert f"envelope ({PROTOBUF}, decoded):" in text.out
    assert '"order_id": "S-1"' in text.out
    decoded = as_json.json()["decoded_envelope"]
    assert decoded["event_id"] == published.event_id
    # Without the generated module the message inside stays base64, with its type named
    assert decoded["message"]["content_type"] == (
        "application/protobuf; proto=orders.v1.OrderPlaced"
    )
    assert decoded["message"]["base64"]
    assert as_json.json()["content_type"] == PROTOBUF
