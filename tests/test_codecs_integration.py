"""Codecs in the facade without a server: AsyncAPI, in-memory tests, handler annotations."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import pytest
from faststream import Context, FastStream
from faststream.nats import NatsBroker, TestNatsBroker
from pydantic import BaseModel

from faststream_natspubsub import (
    AsyncAPI,
    EventMetadata,
    JsonCodec,
    NatsPubsub,
    ProtobufCodec,
    ProtobufMessage,
)
from faststream_natspubsub.codecs import PROTOBUF_CONTENT_TYPE
from faststream_natspubsub.codecs.asyncapi import PROTO_FILE, PROTO_SCHEMA_NAME
from faststream_natspubsub.codecs.targets import HandlerTargets, body_annotation
from faststream_natspubsub.compat import handler_function

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
import orders_pb2  # noqa: E402


class Order(BaseModel):
    order_id: str


def build(codec: Any, version: str = "3.0.0") -> tuple[FastStream, NatsPubsub]:
    broker = NatsBroker()
    pubsub = NatsPubsub(broker, env="prod", app="orders", codec=codec)

    @pubsub.subscriber("order.created")
    @pubsub.publisher("order.audited")
    async def handle(order: ProtobufMessage[orders_pb2.OrderPlaced]) -> Order:
        return Order(order_id=order.order_id)

    return FastStream(broker, specification=AsyncAPI(schema_version=version)), pubsub


def messages_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in document["components"]["messages"].values() if m.get("payload")]


@pytest.mark.parametrize("version", ["3.0.0", "2.6.0"])
def test_asyncapi_shows_the_content_type_and_the_protobuf_schema(version: str) -> None:
    # Given a protobuf app whose handler is typed with a generated class
    document = build(ProtobufCodec(), version)[0].schema.to_specification().to_jsonable()
    json.dumps(document)

    # Then each of its messages names the protobuf content type and the envelope message
    wrapped = [m for m in messages_of(document) if m.get("x-natspubsub-envelope")]
    assert len(wrapped) == 2
    for message in wrapped:
        assert message["contentType"] == PROTOBUF_CONTENT_TYPE
        assert message["x-natspubsub-protobuf"]["message"] == "natspubsub.v1.Envelope"
    schemas = document["components"]["schemas"]
    # The handler's protobuf class is described from its descriptor
    described = [s for s in schemas.values() if s.get("x-protobuf-message")]
    assert described[0]["x-protobuf-message"] == "orders.v1.OrderPlaced"
    assert described[0]["properties"]["quantity"] == {"type": "integer"}
    if version.startswith("3."):
        proto = schemas[PROTO_SCHEMA_NAME]
        assert proto["schemaFormat"].startswith("application/vnd.google.protobuf")
        assert proto["schema"] == PROTO_FILE.read_text("utf-8")
        assert wrapped[0]["x-natspubsub-protobuf"]["schema"] == {
            "$ref": f"#/components/schemas/{PROTO_SCHEMA_NAME}"
        }
    else:  # 2.6 schemas must be JSON schemas: only the reference by name and file
        assert PROTO_SCHEMA_NAME not in schemas


def test_asyncapi_of_a_json_app_says_application_json() -> None:
    document = build(None)[0].schema.to_specification().to_jsonable()
    wrapped = [m for m in messages_of(document) if m.get("x-natspubsub-envelope")]
    assert {m["contentType"] for m in wrapped} == {"application/json"}
    assert not any("x-natspubsub-protobuf" in m for m in wrapped)


async def test_in_memory_a_protobuf_app_round_trips_a_protobuf_message() -> None:
    # Given a protobuf app under TestNatsBroker, its handler typed with the generated class
    broker = NatsBroker()
    pubsub = NatsPubsub(broker, env="test", app="orders", codec=ProtobufCodec())
    got: list[tuple[orders_pb2.OrderPlaced, str]] = []

    @pubsub.subscriber("order.placed")
    async def handle(order: orders_pb2.OrderPlaced, meta: EventMetadata) -> None:
        got.append((order, meta.headers["content-type"]))

    async with TestNatsBroker(broker):
        await pubsub.publish("order.placed", orders_pb2.OrderPlaced(order_id="X", quantity=1))

    assert got == [(orders_pb2.OrderPlaced(order_id="X", quantity=1), PROTOBUF_CONTENT_TYPE)]


async def test_in_memory_the_default_codec_still_sends_application_json() -> None:
    broker = NatsBroker()
    pubsub = NatsPubsub(broker, env="test", app="orders")
    headers: list[str] = []

    @pubsub.subscriber("order.placed")
    async def handle(order: Order, meta: EventMetadata) -> None:
        headers.append(meta.headers["content-type"])

    async with TestNatsBroker(broker):
        await pubsub.publish("order.placed", Order(order_id="X"))

    assert isinstance(pubsub.codec, JsonCodec)
    assert headers == ["application/json"]


def test_handler_function_finds_the_declared_function() -> None:
    # compat: FastStream keeps the declared function on a private attribute
    broker = NatsBroker()
    subscriber = broker.subscriber("a.b")
    assert handler_function(subscriber) is None

    async def handle(order: orders_pb2.OrderPlaced) -> None: ...

    subscriber(handle)
    assert handler_function(subscriber) is handle


def test_the_message_parameter_is_the_first_not_taken_from_the_context() -> None:
    async def handle(
        meta: Annotated[str, Context("message.x")], order: orders_pb2.OrderPlaced
    ) -> None: ...

    async def marked(
        meta: Annotated[str, Context("message.x")],
        order: ProtobufMessage[orders_pb2.OrderPlaced],
    ) -> None: ...

    async def untyped(body, meta: EventMetadata) -> None:  # type: ignore[no-untyped-def]
        ...

    assert body_annotation(handle) is orders_pb2.OrderPlaced
    assert body_annotation(untyped) is None
    assert body_annotation(marked) == ProtobufMessage[orders_pb2.OrderPlaced]


def test_targets_are_known_once_inspected_and_json_apps_pay_nothing() -> None:
    broker = NatsBroker()
    typed, plain = broker.subscriber("a.typed"), broker.subscriber("a.plain")

    @typed
    async def protobuf_handler(order: orders_pb2.OrderPlaced) -> None: ...

    @plain
    async def model_handler(order: Order) -> None: ...

    marked = broker.subscriber("a.marked")

    @marked
    async def marked_handler(order: ProtobufMessage[orders_pb2.OrderPlaced]) -> None: ...

    targets = HandlerTargets()
    targets.inspect([plain])
    assert not targets.any_protobuf  # JSON envelopes skip the look-up entirely
    targets.inspect([typed])
    assert targets.any_protobuf
    assert targets.target(typed) is orders_pb2.OrderPlaced
    assert targets.target(plain) is None
    assert targets.target(marked) is orders_pb2.OrderPlaced
