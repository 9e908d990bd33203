# ruff: noqa: E501
"""The JSON codec's bytes are exactly what the package wrote before codecs existed.

The expected bytes were produced by ``EnvelopeCodec`` of the commit this branch started from
(main at 0a3edd9), before any codec work: plain, gzip, and the metadata-dropping size rule.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from faststream_natspubsub import EnvelopeCodec
from faststream_natspubsub.codecs import JsonCodec

BLOB = b"x" * 300

GOLDEN_PLAIN = b'{"event_id":"7d0c6c1e-0d38-4a4e-9a0e-5a8e2f7f8c11","schema_version":1,"topic":"order.created","occurred_at":"2025-01-17T10:30:00.000Z","message":{"order_id":"ORD-123","total":99.99},"metadata":{"correlation_id":"req-123","app_name":"orders","environment":"production","app_version":"1.4.2","span_id":"00f067aa0ba902b7","custom":[1,2.5,{"k":null}],"\xc3\xbcn\xc3\xaf":"\xc3\xa7\xc3\xb8d\xc3\xa9"}}'
GOLDEN_GZIP = b'\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03=\x8f\xb1N\xc40\x10D\xffe\xeb8Z;w\x97\x8bkz$D\x05B\xd1\x9e\xbd\x07\xd1%vp\x9c4Q\xbe\x07Q\xd1R\xd0\xe5\xc7pt\x07\xed\xce\x9b\xd9\x99\x19xb\x17\xeb\xc6\x82\x86\xd2\xa29\x18\xc9\x02mq\x14;\xda\xb1\xa8\x08Y\xec\xe9\xc8\xea\\\x9e\x8fFJ\xc8`0o\xdcQ=q\x18\x1a\xef@\xcb\x0c\xa2\xef\x1b\x93\x12|\xb0\x1cr\x13\x98"\xdb\x84zc\xc6\x10\xd8\xd6\x14\x93\xaaP\xed\x05J!\xcbG\x89\xba@\x8d\x98#\xe2S\x02;\x1e\x06ze\xd0\xf35\xe3Z\xe8\xfe\xe1NHU\xc0\xf6 R\x0b\xba\xaa\xf2\xaaZ6<\x92\xa5H\x1bo|\xfa\xd0RL]\xae\xae\xc0\xef7\x17\xf5}\xed\xa8\xe3\xbffC\xba\xb1\x9b\x9a\xe0]\x97V\xa7s\x1f\xbc\x1d\xcd\xe6\xbd\xe1\xff\xab@\xe6\xbb\\ms{\xba\x05#\x9e\xf1P\x12\xe1\x89*T\xa72\x89f\x1c\xa2\xef@?\xcbL\xe5\xfbl\x86\x0bh7\xb6\xed\xf2\x92\xc1\xfa\xe3\xd6\xafd[?\xd6o\xbb~\xc2\xb2\xfc\x02e\\\xb1kn\x01\x00\x00'
GOLDEN_DROPPED_APP_VERSION = (
    b'{"event_id":"7d0c6c1e-0d38-4a4e-9a0e-5a8e2f7f8c11","schema_version":1,"topic":"order.created","occurred_at":"2025-01-17T10:30:00.000Z","message":{"blob":"'
    + BLOB
    + b'"},"metadata":{"correlation_id":"req-123","app_name":"orders","environment":"production","span_id":"00f067aa0ba902b7","custom":[1,2.5,{"k":null}],"\xc3\xbcn\xc3\xaf":"\xc3\xa7\xc3\xb8d\xc3\xa9"}}'
)
GOLDEN_DROPPED_APP_VERSION_AND_SPAN_ID = (
    b'{"event_id":"7d0c6c1e-0d38-4a4e-9a0e-5a8e2f7f8c11","schema_version":1,"topic":"order.created","occurred_at":"2025-01-17T10:30:00.000Z","message":{"blob":"'
    + BLOB
    + b'"},"metadata":{"correlation_id":"req-123","app_name":"orders","environment":"production","custom":[1,2.5,{"k":null}],"\xc3\xbcn\xc3\xaf":"\xc3\xa7\xc3\xb8d\xc3\xa9"}}'
)


class Order(BaseModel):
    order_id: str
    total: float


def envelope_data(message: Any = None) -> dict[str, Any]:
    return {
        "event_id": "7d0c6c1e-0d38-4a4e-9a0e-5a8e2f7f8c11",
        "schema_version": 1,
        "topic": "order.created",
        "occurred_at": "2025-01-17T10:30:00.000Z",
        "message": message or Order(order_id="ORD-123", total=99.99),
        "metadata": {
            "correlation_id": "req-123",
            "app_name": "orders",
            "environment": "production",
            "app_version": "1.4.2",
            "span_id": "00f067aa0ba902b7",
            "custom": [1, 2.5, {"k": None}],
            "\u00fcn\u00ef": "\u00e7\u00f8d\u00e9",
        },
    }


def test_the_json_codec_is_the_envelope_codec() -> None:
    assert JsonCodec is EnvelopeCodec
    assert EnvelopeCodec().content_type == "application/json"


def test_json_bytes_are_unchanged() -> None:
    assert EnvelopeCodec().encode(envelope_data()) == (GOLDEN_PLAIN, False)


def test_gzip_bytes_are_unchanged() -> None:
    assert EnvelopeCodec(compress_threshold=100).encode(envelope_data()) == (GOLDEN_GZIP, True)


def test_the_size_rule_drops_the_same_metadata_and_writes_the_same_bytes() -> None:
    big = {"blob": "x" * 300}
    assert EnvelopeCodec(max_message_size=631).encode(envelope_data(big)) == (
        GOLDEN_DROPPED_APP_VERSION,
        False,
    )
    assert EnvelopeCodec(max_message_size=601).encode(envelope_data(big)) == (
        GOLDEN_DROPPED_APP_VERSION_AND_SPAN_ID,
        False,
    )
