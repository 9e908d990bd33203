"""Codecs in memory: protobuf and MessagePack envelopes, reading by content type, the size rule."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgpack
import pytest
from google.protobuf import descriptor_pb2
from pydantic import BaseModel

from faststream_natspubsub import (
    Envelope,
    EnvelopeCodec,
    EnvelopeError,
    MalformedEnvelopeError,
    MessageTooLargeError,
    MissingExtraError,
)
from faststream_natspubsub.codecs import (
    JSON_CONTENT_TYPE,
    MSGPACK_CONTENT_TYPE,
    PROTOBUF_CONTENT_TYPE,
    CodecReader,
    EncodedMessage,
    MsgpackCodec,
    ProtobufCodec,
    envelope_pb2,
    measure,
)
from faststream_natspubsub.codecs.content_types import proto_name, wire_format
from faststream_natspubsub.codecs.display import describe
from faststream_natspubsub.codecs.message import message_for
from faststream_natspubsub.envelope import OPTIONAL_METADATA_DROP_ORDER

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # the example's generated orders_pb2
import orders_pb2  # noqa: E402

BINARY_CODECS = [ProtobufCodec, MsgpackCodec]


class Order(BaseModel):
    order_id: str
    customer_id: str
    quantity: int
    total: float


def envelope_data(message: Any = None, **metadata: Any) -> dict[str, Any]:
    return {
        "event_id": "7d0c6c1e-0d38-4a4e-9a0e-5a8e2f7f8c11",
        "schema_version": 1,
        "topic": "order.created",
        "occurred_at": "2025-01-17T10:30:00.123Z",
        "message": {"order_id": "ORD-1", "total": 9.5} if message is None else message,
        "metadata": {"correlation_id": "req-1", "app_name": "orders", **metadata},
    }


@pytest.mark.parametrize("codec_class", [EnvelopeCodec, *BINARY_CODECS])
def test_every_codec_round_trips_every_field(codec_class: type[EnvelopeCodec]) -> None:
    # Given metadata of every JSON kind and a top-level field of another producer
    data = envelope_data(replay_count=2, dlq_replay={"dlq_seq": 7, "path": ["a", 1.5]})
    data["message_type"] = "OrderCreated"
    codec = codec_class()

    # When it is encoded and decoded
    payload, compressed = codec.encode(data)
    envelope = codec.decode(payload)

    # Then nothing is lost, numbers keep their kind
    assert not compressed
    assert envelope == Envelope(
        event_id="7d0c6c1e-0d38-4a4e-9a0e-5a8e2f7f8c11",
        message={"order_id": "ORD-1", "total": 9.5},
        occurred_at=datetime(2025, 1, 17, 10, 30, 0, 123000, tzinfo=timezone.utc),
        topic="order.created",
        metadata={
            "correlation_id": "req-1",
            "app_name": "orders",
            "replay_count": 2,
            "dlq_replay": {"dlq_seq": 7, "path": ["a", 1.5]},
        },
        extra={"message_type": "OrderCreated"},
    )


def test_the_protobuf_envelope_has_the_published_fields() -> None:
    payload, _ = ProtobufCodec().encode(envelope_data(custom=True))

    wire = envelope_pb2.Envelope.FromString(payload)

    assert wire.event_id == "7d0c6c1e-0d38-4a4e-9a0e-5a8e2f7f8c11"
    assert wire.schema_version == 1
    assert wire.topic == "order.created"
    assert wire.occurred_at.ToJsonString() == "2025-01-17T10:30:00.123Z"
    assert wire.message_content_type == JSON_CONTENT_TYPE
    assert wire.message == b'{"order_id":"ORD-1","total":9.5}'
    assert dict(wire.metadata) == {"correlation_id": "req-1", "app_name": "orders"}
    assert wire.metadata_values["custom"] is True


def test_a_protobuf_message_rides_as_its_own_bytes_and_content_type() -> None:
    order = orders_pb2.OrderPlaced(order_id="ORD-1", customer_id="C-7", quantity=2, total=25.0)
    payload, _ = ProtobufCodec().encode(envelope_data(order))

    message = ProtobufCodec().decode(payload).message

    assert message == EncodedMessage(
        order.SerializeToString(), "application/protobuf; proto=orders.v1.OrderPlaced"
    )
    # A handler typed with the generated class gets it; any other handler, its JSON form
    assert message_for(message, orders_pb2.OrderPlaced) == order
    assert Order.model_validate(message_for(message, None)) == Order(
        order_id="ORD-1", customer_id="C-7", quantity=2, total=25.0
    )


def test_a_json_body_becomes_the_protobuf_class_a_handler_asks_for() -> None:
    order = message_for({"order_id": "ORD-1", "quantity": 3, "unknown": 1}, orders_pb2.OrderPlaced)
    assert order == orders_pb2.OrderPlaced(order_id="ORD-1", quantity=3)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (EncodedMessage(b"\x0a\x01x", "application/protobuf; proto=other.v1.Thing"), "other.v1"),
        (EncodedMessage(b"\xff\xff", "application/protobuf; proto=orders.v1.OrderPlaced"), "valid"),
        (EncodedMessage(b"x", "text/plain"), "text/plain"),
        ({"quantity": "many"}, "does not fit"),
        ([1, 2], "cannot become"),
    ],
)
def test_a_message_that_cannot_become_the_handlers_class_is_malformed(
    message: Any, reason: str
) -> None:
    with pytest.raises(MalformedEnvelopeError, match=reason):
        message_for(message, orders_pb2.OrderPlaced)


def test_a_protobuf_body_of_an_unknown_type_names_the_fix() -> None:
    unknown = EncodedMessage(b"\x0a\x01x", "application/protobuf; proto=nowhere.v1.Ghost")
    with pytest.raises(MalformedEnvelopeError, match="import its generated module"):
        message_for(unknown, None)


def test_the_json_codec_writes_a_protobuf_message_in_its_json_form() -> None:
    order = orders_pb2.OrderPlaced(order_id="ORD-1", quantity=2)
    payload, _ = EnvelopeCodec().encode(envelope_data(order))
    assert EnvelopeCodec().decode(payload).message == {
        "order_id": "ORD-1",
        "customer_id": "",
        "quantity": "2",  # int64 is a string in protobuf's JSON mapping; pydantic reads it
        "total": 0.0,
    }


def test_msgpack_refuses_a_protobuf_message_before_sending() -> None:
    with pytest.raises(EnvelopeError, match="ProtobufCodec"):
        MsgpackCodec().encode(envelope_data(orders_pb2.OrderPlaced(order_id="x")))


@pytest.mark.parametrize("codec_class", BINARY_CODECS)
def test_the_size_rule_drops_optional_metadata_then_refuses(
    codec_class: type[EnvelopeCodec],
) -> None:
    data = envelope_data(
        {"blob": "a" * 200}, **dict.fromkeys(OPTIONAL_METADATA_DROP_ORDER, "m" * 40)
    )
    full = len(codec_class().encode(dict(data, metadata=dict(data["metadata"])))[0])

    payload, _ = codec_class(max_message_size=full - 20).encode(data)

    kept = codec_class().decode(payload).metadata
    assert "app_version" not in kept  # dropped first
    assert {"session_id", "parent_span_id", "span_id", "correlation_id"} <= kept.keys()
    with pytest.raises(MessageTooLargeError) as caught:
        codec_class(max_message_size=100).encode(envelope_data({"blob": "a" * 500}))
    assert caught.value.limit == 100


@pytest.mark.parametrize("codec_class", BINARY_CODECS)
def test_gzip_and_the_limit_count_the_bytes_sent(codec_class: type[EnvelopeCodec]) -> None:
    codec = codec_class(max_message_size=2_000, compress_threshold=1_000)
    data = envelope_data({"blob": "a" * 50_000})

    sizes = measure(codec, data)
    payload, compressed = codec.encode(data)

    assert compressed
    assert payload[:2] == b"\x1f\x8b"
    assert sizes.sent == len(payload) < 2_000 < 50_000 < sizes.serialized
    assert sizes.compressed
    assert codec.decode(payload).message == {"blob": "a" * 50_000}


@pytest.mark.parametrize("codec_class", BINARY_CODECS)
def test_a_gzip_bomb_is_malformed_in_every_codec(codec_class: type[EnvelopeCodec]) -> None:
    inner = codec_class().serialize(envelope_data({"blob": "0" * 5_000_000}))
    with pytest.raises(MalformedEnvelopeError, match="inflates beyond"):
        codec_class(max_decompressed_size=1_000_000).decode(gzip.compress(inner))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xff\xff", "not a protobuf envelope"),
        (b"", "event_id"),
        (envelope_pb2.Envelope(topic="x").SerializeToString(), "event_id"),
        (b"\x0a\x02\xff\xfe", "not a protobuf envelope"),  # event_id not UTF-8
        (
            envelope_pb2.Envelope(event_id="e", message=b"{nope").SerializeToString(),
            "not valid JSON",
        ),
        (b"\x1f\x8bnot gzip", "gzip"),
    ],
)
def test_unreadable_protobuf_bytes_are_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedEnvelopeError, match=reason):
        ProtobufCodec().decode(payload)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1", "not a MessagePack envelope"),
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({"message": {}}), "event_id"),
        (msgpack.packb({"event_id": "x", "message": {}}) + b"\x01", "not a MessagePack"),
        (msgpack.packb({1: "x"}), "not a MessagePack"),
    ],
)
def test_unreadable_msgpack_bytes_are_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedEnvelopeError, match=reason):
        MsgpackCodec().decode(payload)


def test_a_msgpack_timestamp_from_another_producer_is_read() -> None:
    moment = datetime(2025, 1, 17, 10, 30, 0, 123000, tzinfo=timezone.utc)
    payload = msgpack.packb(
        {"event_id": "e", "message": {}, "occurred_at": msgpack.Timestamp.from_datetime(moment)},
        datetime=False,
    )
    assert MsgpackCodec().decode(payload).occurred_at == moment


@pytest.mark.parametrize(
    ("content_type", "codec_class"),
    [
        (None, EnvelopeCodec),
        ("", EnvelopeCodec),
        (JSON_CONTENT_TYPE, EnvelopeCodec),
        ("application/json; charset=utf-8", EnvelopeCodec),
        ("text/plain", EnvelopeCodec),  # what FastStream sends for str: read as JSON, as before
        (PROTOBUF_CONTENT_TYPE, ProtobufCodec),
        ("application/x-protobuf; messageType=natspubsub.v1.Envelope", ProtobufCodec),
        ("Application/Protobuf", ProtobufCodec),
        (MSGPACK_CONTENT_TYPE, MsgpackCodec),
        ("application/vnd.msgpack", MsgpackCodec),
    ],
)
def test_the_reader_picks_the_codec_by_content_type(
    content_type: str | None, codec_class: type[EnvelopeCodec]
) -> None:
    assert type(CodecReader().codec_for(content_type)) is codec_class


def test_the_reader_reads_a_capitalised_header_and_keeps_the_apps_limits() -> None:
    payload = gzip.compress(ProtobufCodec().serialize(envelope_data({"blob": "0" * 100_000})))
    reader = CodecReader(EnvelopeCodec(max_decompressed_size=50_000))

    with pytest.raises(MalformedEnvelopeError, match="inflates beyond 50000"):
        reader.decode_headers(payload, {"Content-Type": PROTOBUF_CONTENT_TYPE})


def test_a_bare_protobuf_message_is_not_taken_for_an_envelope() -> None:
    bare = orders_pb2.OrderPlaced(order_id="x").SerializeToString()
    with pytest.raises(MalformedEnvelopeError, match="not an envelope"):
        CodecReader().decode(bare, "application/protobuf; proto=orders.v1.OrderPlaced")


def test_content_types_are_parsed_tolerantly() -> None:
    assert proto_name('application/protobuf; charset=x; proto="a.b.C"') == "a.b.C"
    assert proto_name("application/json") is None
    assert wire_format("x" * 10_000).value == "json"


@pytest.mark.parametrize("codec_class", [EnvelopeCodec, *BINARY_CODECS])
def test_dead_letter_display_decodes_every_codec(codec_class: type[EnvelopeCodec]) -> None:
    order = orders_pb2.OrderPlaced(order_id="ORD-1", quantity=2)
    message: Any = order if codec_class is ProtobufCodec else {"order_id": "ORD-1"}
    codec = codec_class()
    payload, _ = codec.encode(envelope_data(message))

    shown = describe(payload, {"content-type": codec.content_type})

    assert shown is not None
    assert shown["event_id"] == "7d0c6c1e-0d38-4a4e-9a0e-5a8e2f7f8c11"
    assert shown["message"]["order_id"] == "ORD-1"
    assert describe(b"garbage", {"content-type": codec.content_type}) is None


def test_the_checked_in_protobuf_code_matches_envelope_proto(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "envelope.pb"
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--descriptor_set_out={out}",
            str(ROOT / "faststream_natspubsub/codecs/envelope.proto"),
        ]
    )
    assert code == 0
    [compiled] = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    _drop_json_names(compiled.message_type)  # protoc leaves them out of generated code
    checked_in = descriptor_pb2.FileDescriptorProto.FromString(
        envelope_pb2.DESCRIPTOR.serialized_pb
    )
    assert checked_in == compiled


def _drop_json_names(messages: Any) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)


def _run_without(module: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where ``module`` cannot be imported."""
    script = f"import sys\nsys.modules[{module!r}] = None\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("module", "codec", "extra"),
    [("google.protobuf", "ProtobufCodec", "protobuf"), ("msgpack", "MsgpackCodec", "msgpack")],
)
def test_a_missing_extra_is_named_and_the_base_install_still_works(
    module: str, codec: str, extra: str
) -> None:
    completed = _run_without(
        module,
        f"""
        from faststream_natspubsub import MissingExtraError, NatsPubsub, EnvelopeCodec
        from faststream_natspubsub.codecs import {codec}
        assert EnvelopeCodec().decode(EnvelopeCodec().encode(
            {{"event_id": "e", "message": {{}}}})[0]).event_id == "e"
        try:
            {codec}()
        except MissingExtraError as exc:
            print(exc)
        """,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"pip install 'faststream-natspubsub[{extra}]'" in completed.stdout


def test_without_either_extra_a_json_app_publishes_and_consumes_as_before() -> None:
    completed = _run_without(
        "google.protobuf",
        """
        import asyncio, sys
        sys.modules["msgpack"] = None
        from faststream.nats import NatsBroker, TestNatsBroker
        from faststream_natspubsub import NatsPubsub

        async def main():
            broker = NatsBroker()
            pubsub = NatsPubsub(broker, env="dev", app="orders")
            seen = []

            @pubsub.subscriber("order.created")
            async def handle(body: dict) -> None:
                seen.append(body)

            async with TestNatsBroker(broker):
                await pubsub.publish("order.created", {"id": 1})
            print(seen)

        asyncio.run(main())
        """,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[{'id': 1}]"


def test_a_consumer_without_the_extra_dead_letters_with_the_extra_named() -> None:
    payload, _ = ProtobufCodec().encode(envelope_data())
    completed = _run_without(
        "google.protobuf",
        f"""
        from faststream_natspubsub import MalformedEnvelopeError
        from faststream_natspubsub.codecs import CodecReader
        try:
            CodecReader().decode({payload!r}, {PROTOBUF_CONTENT_TYPE!r})
        except MalformedEnvelopeError as exc:
            print(exc)
        """,
    )
    assert completed.returncode == 0, completed.stderr
    assert "install the 'protobuf' extra" in completed.stdout


def test_missing_extra_error_is_an_import_error_of_the_package() -> None:
    error = MissingExtraError("protobuf", "google.protobuf")
    assert isinstance(error, ImportError)
    assert error.name == "google.protobuf"
    assert error.extra == "protobuf"
