"""Envelope encoding and tolerant decoding, in memory."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import tracemalloc
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import BaseModel
from support import NATSPUBSUB_TS_ENVELOPE

from faststream_natspubsub import (
    Envelope,
    EnvelopeCodec,
    EnvelopeError,
    MalformedEnvelopeError,
    MessageTooLargeError,
)
from faststream_natspubsub.envelope import (
    OPTIONAL_METADATA_DROP_ORDER,
    check_event_id,
    format_timestamp,
    message_to_payload,
    new_event_id,
    parse_timestamp,
)

# Ruby: whole seconds, domain/resource/action, and the older "payload" body.
NATSPUBSUB_RUBY_EVENT = (
    b'{"event_id":"e-1","schema_version":1,"producer":"billing","domain":"billing",'
    b'"resource":"invoice","action":"paid","resource_id":"INV-9",'
    b'"occurred_at":"2025-01-17T10:30:00Z","payload":{"invoice":"INV-9"}}'
)


class Order(BaseModel):
    order_id: str
    total: float


@dataclasses.dataclass
class Shipment:
    shipment_id: str


def test_typescript_envelope_maps_producer_and_trace_id_into_metadata() -> None:
    envelope = EnvelopeCodec().decode(NATSPUBSUB_TS_ENVELOPE)
    assert envelope.event_id == "0b9b8f3c-1f3e-4a57-b7a5-0c6a86e3a111"
    assert envelope.topic == "order.created"
    assert envelope.message == {"order_id": "ORD-123", "total": 99.99}
    assert envelope.metadata["app_name"] == "orders"
    assert envelope.metadata["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert envelope.occurred_at == datetime(2025, 1, 17, 10, 30, 0, 123000, tzinfo=timezone.utc)
    assert envelope.extra["message_type"] == "OrderCreated"


def test_ruby_event_with_payload_and_whole_seconds_is_read_and_unknown_fields_kept() -> None:
    envelope = EnvelopeCodec().decode(NATSPUBSUB_RUBY_EVENT)
    assert envelope.message == {"invoice": "INV-9"}
    assert envelope.occurred_at == datetime(2025, 1, 17, 10, 30, tzinfo=timezone.utc)
    assert envelope.metadata["app_name"] == "billing"
    assert {"domain", "resource", "action", "resource_id"} <= envelope.extra.keys()
    again = json.loads(json.dumps(envelope.to_dict(), default=str))
    assert again["resource_id"] == "INV-9"


def test_round_trip_keeps_every_field() -> None:
    original = Envelope(
        event_id="id-1",
        message={"a": 1},
        occurred_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
        topic="a.b",
        metadata={"correlation_id": "c", "custom": [1, 2]},
    )
    payload, compressed = EnvelopeCodec().encode(original.to_dict())
    assert not compressed
    assert EnvelopeCodec().decode(payload) == original


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b'"text"', "not an object"),
        (b'{"message": {}}', "event_id"),
        (b'{"event_id": "", "message": {}}', "event_id"),
        (b'{"event_id": 5, "message": {}}', "event_id"),
        (b'{"event_id": "x"}', "neither"),
        (b'{"event_id": "x", "message": {}, "metadata": []}', "metadata"),
        (b'{"event_id": "x", "message": {}, "occurred_at": "yesterday"}', "occurred_at"),
        (b'{"event_id": "x", "message": {}, "occurred_at": 12}', "occurred_at"),
        # Valid ISO-8601 without a UTC form (before year 1, after year 9999)
        (b'{"event_id": "x", "message": {}, "occurred_at": "0001-01-01T00:00:00+01:00"}', "occ"),
        (b'{"event_id": "x", "message": {}, "occurred_at": "9999-12-31T23:59:00-01:00"}', "occ"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"\x1f\x8bnot gzip at all", "gzip"),
    ],
)
def test_unreadable_bytes_are_malformed_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedEnvelopeError, match=reason):
        EnvelopeCodec().decode(payload)


def test_timestamps_have_milliseconds_and_z() -> None:
    moment = datetime(2025, 1, 17, 11, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert format_timestamp(moment) == "2025-01-17T10:30:00.123Z"
    assert format_timestamp(datetime(2025, 1, 17, 10, 30)) == "2025-01-17T10:30:00.000Z"
    assert parse_timestamp("2025-01-17T10:30:00+02:00").utcoffset() == timedelta(hours=2)


def test_models_dataclasses_and_dicts_are_objects_other_values_are_refused() -> None:
    order = Order(order_id="1", total=2)
    assert message_to_payload(order) is order
    assert message_to_payload({"a": 1}) == {"a": 1}
    assert message_to_payload(Shipment("s")) == Shipment("s")
    for bad in (1, "text", [1, 2], None, b"bytes"):
        with pytest.raises(EnvelopeError, match="JSON object"):
            message_to_payload(bad)


def test_an_oversize_message_first_loses_optional_metadata() -> None:
    codec = EnvelopeCodec(max_message_size=400)
    data = {
        "event_id": "x",
        "message": {"blob": "a" * 200},
        "metadata": dict.fromkeys(OPTIONAL_METADATA_DROP_ORDER, "m" * 40)
        | {"correlation_id": "keep"},
    }
    payload, _ = codec.encode(data)
    assert len(payload) <= 400
    kept = json.loads(payload)["metadata"]
    assert kept["correlation_id"] == "keep"
    assert "app_version" not in kept  # dropped first
    assert "span_id" in kept  # dropped last, not needed here


def test_a_message_too_large_even_without_metadata_names_both_sizes() -> None:
    codec = EnvelopeCodec(max_message_size=100)
    with pytest.raises(MessageTooLargeError) as caught:
        codec.encode({"event_id": "x", "message": {"blob": "a" * 500}, "metadata": {}})
    assert caught.value.limit == 100
    assert caught.value.size > 500
    assert "100" in str(caught.value)


def test_gzip_applies_above_the_threshold_and_the_limit_counts_compressed_bytes() -> None:
    codec = EnvelopeCodec(max_message_size=2_000, compress_threshold=1_000)
    data = {"event_id": "x", "message": {"blob": "a" * 50_000}}
    payload, compressed = codec.encode(data)
    assert compressed
    assert payload[:2] == b"\x1f\x8b"
    assert len(payload) < 2_000
    assert codec.decode(payload).message == {"blob": "a" * 50_000}


def test_a_gzip_bomb_is_malformed_and_never_inflated_in_memory() -> None:
    bomb = gzip.compress(b'{"event_id":"x","message":{"a":"' + b"0" * 60_000_000 + b'"}}')
    assert len(bomb) < 1_000_000
    codec = EnvelopeCodec(max_decompressed_size=1_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(MalformedEnvelopeError, match="inflates beyond"):
            codec.decode(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000  # 60 MB were never materialised


def test_a_truncated_gzip_body_is_malformed() -> None:
    body = gzip.compress(b'{"event_id":"x","message":{}}')
    with pytest.raises(MalformedEnvelopeError, match="truncated"):
        EnvelopeCodec().decode(body[:-10])


def test_event_ids_are_distinct_uuid4_across_blocks_of_random_bits() -> None:
    ids = [new_event_id() for _ in range(3 * 256 + 7)]  # past several reads of random bits
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_draws_event_ids_of_its_own() -> None:
    new_event_id()  # the parent holds unused random bits now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids and leave at once
        os.write(write_end, " ".join(new_event_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = set(pipe.read().decode().split())
    parent_ids = {new_event_id() for _ in range(5)}
    assert len(child_ids) == 5
    assert not child_ids & parent_ids


@pytest.mark.parametrize(
    "value",
    [123, None, "", " order-2", "order-2 ", "order-1\ncancel", "a\rb", "tab\tin", "nul\x00"],
)
def test_an_id_a_header_cannot_carry_unchanged_is_refused(value: object) -> None:
    # nats-py strips a header value and turns CR/LF into spaces: " order-2" and "order-2"
    # would share one Nats-Msg-Id, and the second event would be dropped as a duplicate
    with pytest.raises(EnvelopeError, match="event_id"):
        check_event_id(value)


@pytest.mark.parametrize("value", ["order-1 cancel", "ünïcode-ид", "7d0c6c1e-0d38-4a4e"])
def test_an_id_that_travels_unchanged_is_kept_as_given(value: str) -> None:
    assert check_event_id(value) is value
