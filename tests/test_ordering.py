"""Ordering keys for ``order_by``: read from the event's message or its metadata."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.msg import Msg
from pydantic_core import to_json

from faststream_natspubsub import EnvelopeCodec
from faststream_natspubsub.codecs.content_types import CONTENT_TYPE_HEADER
from faststream_natspubsub.codecs.msgpack import MsgpackCodec
from faststream_natspubsub.dispatch import DispatchSettings, dispatch_settings, stream_sequence
from faststream_natspubsub.ordering import key_function
from faststream_natspubsub.retry import RetryPolicy


def _msg(
    data: bytes,
    subject: str = "prod.shop.order.paid",
    reply: str = "",
    headers: dict[str, str] | None = None,
) -> Msg:
    return Msg(_client=None, subject=subject, reply=reply, data=data, headers=headers)  # type: ignore[arg-type]


def _envelope(message: dict[str, Any], **metadata: Any) -> bytes:
    return to_json(
        {"event_id": "e-1", "topic": "order.paid", "message": message, "metadata": metadata}
    )


def test_a_callable_gets_the_message_as_published() -> None:
    codec = EnvelopeCodec(compress_threshold=10)
    key = key_function(lambda message: message["customer"], codec)
    assert key(_msg(_envelope({"customer": "C-7", "total": 3}))) == "C-7"
    # NatsPubsub 1.0's older form, and a compressed body
    assert key(_msg(to_json({"event_id": "e", "payload": {"customer": "C-8"}}))) == "C-8"
    compressed, was_compressed = codec.encode(
        {"event_id": "e", "message": {"customer": "C-9", "pad": "x" * 50}}
    )
    assert was_compressed
    assert key(_msg(compressed)) == "C-9"
    # No event id, or neither message nor payload: not an envelope, key None
    assert key(_msg(to_json({"message": {"customer": "C-1"}}))) is None
    assert key(_msg(to_json({"event_id": "e"}))) is None


def test_a_field_name_reads_the_envelope_metadata_subject_or_topic() -> None:
    data = _envelope({"x": 1}, tenant_id="t-1", custom=["a", 1])
    assert key_function("tenant_id")(_msg(data)) == "t-1"
    assert key_function("subject")(_msg(data)) == "prod.shop.order.paid"
    assert key_function("topic")(_msg(data)) == "order.paid"
    # A value that cannot be a dict key still orders: by its text
    assert key_function("custom")(_msg(data)) == repr(["a", 1])


def test_the_topic_is_the_subjects_not_the_envelopes_claim() -> None:
    data = _envelope({"x": 1})  # claims the topic "order.paid"
    assert key_function("topic")(_msg(data, subject="prod.shop.order.refunded")) == (
        "order.refunded"
    )


def test_keys_are_read_from_envelopes_of_every_codec_by_their_content_type() -> None:
    # Given a MessagePack envelope received by an app whose own codec is JSON
    codec = MsgpackCodec()
    data, _ = codec.encode(
        {"event_id": "e-1", "message": {"customer": "C-5"}, "metadata": {"tenant_id": "t-5"}}
    )
    headers = {CONTENT_TYPE_HEADER: codec.content_type}
    # Then the callable and a metadata field read it as the envelope middleware would
    assert key_function(lambda message: message["customer"])(_msg(data, headers=headers)) == "C-5"
    assert key_function("tenant_id")(_msg(data, headers=headers)) == "t-5"


def test_an_unreadable_key_is_none() -> None:
    # Given a missing field, a callable that raises, an unhashable result, and bad bytes
    data = _envelope({"x": 1})
    assert key_function("tenant_id")(_msg(data)) is None
    assert key_function(lambda message: message["missing"])(_msg(data)) is None
    assert key_function(lambda message: [1, 2])(_msg(data)) is None
    assert key_function(lambda message: message["x"])(_msg(b"not json")) is None
    assert key_function("tenant_id")(_msg(b"[]")) is None


def test_order_by_must_be_a_field_name_or_a_callable() -> None:
    with pytest.raises(ValueError, match="field"):
        key_function("  ")
    with pytest.raises(TypeError, match="callable"):
        key_function(42)  # type: ignore[arg-type]


def test_the_stream_sequence_comes_from_the_reply_subject() -> None:
    plain = "$JS.ACK.ORDERS.durable.3.1042.77.1700000000000000000.5"
    domain = "$JS.ACK.hub.ACCHASH.ORDERS.durable.3.1042.77.1700000000000000000.5.token"
    assert stream_sequence(_msg(b"", reply=plain)) == 1042
    assert stream_sequence(_msg(b"", reply=domain)) == 1042
    assert stream_sequence(_msg(b"", reply="_INBOX.x")) == 0
    assert stream_sequence(_msg(b"", reply="$JS.ACK.too.short")) == 0


def test_recovery_waits_for_the_longest_a_pending_message_takes_to_return() -> None:
    # The policy's longest delay is 30 s, ack_wait 10 s: recovery waits 30 s plus a margin
    settings = dispatch_settings(
        max_workers=4, ack_wait=10.0, order_by=key_function("tenant_id"), retry=RetryPolicy()
    )
    assert settings.order_by is not None
    assert 30.0 < settings.recovery_timeout <= 35.0
    # A long ack_wait wins over short retry delays
    settings = dispatch_settings(
        max_workers=1, ack_wait=120.0, order_by=None, retry=RetryPolicy(backoff=(1.0,))
    )
    assert settings.order_by is None
    assert 120.0 < settings.recovery_timeout <= 125.0


def test_dispatch_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        DispatchSettings(max_workers=0)
    with pytest.raises(ValueError, match="ack_wait"):
        DispatchSettings(ack_wait=0)
