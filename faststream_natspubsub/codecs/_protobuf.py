"""The protobuf envelope (``natspubsub.v1.Envelope``) to and from the envelope dict.

Imported only when the ``protobuf`` extra is installed (see :class:`ProtobufCodec`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Final

from google.protobuf.message import DecodeError
from google.protobuf.struct_pb2 import ListValue, Struct
from pydantic_core import PydanticSerializationError, from_json, to_json, to_jsonable_python

from ..envelope import (
    SCHEMA_VERSION,
    Envelope,
    MalformedEnvelopeError,
    _is_protobuf_message,
    parse_timestamp,
)
from ..errors import EnvelopeError
from .content_types import JSON_CONTENT_TYPE, is_json, proto_content_type
from .envelope_pb2 import Envelope as EnvelopeProto
from .message import EncodedMessage

__all__ = ("deserialize", "serialize")

_CORE_FIELDS: Final = frozenset(
    {"event_id", "schema_version", "topic", "occurred_at", "message", "metadata"}
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Integral doubles below this come back as ints: Struct numbers are doubles, as in JSON.
_EXACT_INT: Final = 2**53
# The seconds of the last timestamp read: events published in the same second share them.
_last_second: tuple[str, int] = ("", 0)


def serialize(data: dict[str, Any]) -> bytes:
    """The protobuf bytes of an envelope dict (as built for publishing, or ``to_dict()``)."""
    body, body_type = _message_bytes(data.get("message"))
    others: dict[str, Any] = {}
    try:
        envelope = EnvelopeProto(
            event_id=data["event_id"],
            schema_version=data.get("schema_version", SCHEMA_VERSION),
            topic=data.get("topic") or "",
            message=body,
            message_content_type=body_type,
        )
        metadata = data.get("metadata")
        if metadata:
            strings = envelope.metadata  # item by item: faster than one update() in upb
            for key, value in metadata.items():
                if type(value) is str:
                    strings[key] = value
                else:
                    others[key] = value
        occurred_at = data.get("occurred_at")
        if occurred_at is not None:
            stamp = envelope.occurred_at
            stamp.seconds, stamp.nanos = _seconds_and_nanos(occurred_at)
        if others:
            envelope.metadata_values.update(_jsonable(others))
        if not data.keys() <= _CORE_FIELDS:
            extra = {k: v for k, v in data.items() if k not in _CORE_FIELDS}
            envelope.extra.update(_jsonable(extra))
    except (TypeError, ValueError, KeyError) as exc:
        raise EnvelopeError(f"envelope cannot be written as protobuf: {exc!r}") from exc
    return envelope.SerializeToString()


def deserialize(payload: bytes) -> Envelope:
    """Read ``natspubsub.v1.Envelope`` bytes; raise :class:`MalformedEnvelopeError`."""
    try:
        envelope = EnvelopeProto.FromString(payload)
    except DecodeError as exc:
        raise MalformedEnvelopeError(f"not a protobuf envelope: {exc}") from exc
    event_id = envelope.event_id
    if not event_id:
        raise MalformedEnvelopeError("envelope has no event_id string")
    strings = envelope.metadata
    metadata: dict[str, Any] = {key: strings[key] for key in strings}  # faster than dict()
    if envelope.HasField("metadata_values"):
        metadata.update(_plain(envelope.metadata_values))
    extra: dict[str, Any] = _plain(envelope.extra) if envelope.HasField("extra") else {}
    if extra:  # another producer's top-level fields, mapped as for JSON envelopes
        producer = extra.get("producer")
        if isinstance(producer, str) and "app_name" not in metadata:
            metadata["app_name"] = producer
        trace_id = extra.get("trace_id")
        if isinstance(trace_id, str) and "trace_id" not in metadata:
            metadata["trace_id"] = trace_id
    occurred_at = None
    if envelope.HasField("occurred_at"):
        stamp = envelope.occurred_at
        try:
            occurred_at = datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise MalformedEnvelopeError("envelope 'occurred_at' is out of range") from exc
    return Envelope(
        event_id=event_id,
        message=_message(envelope.message, envelope.message_content_type),
        occurred_at=occurred_at,
        topic=envelope.topic or None,
        metadata=metadata,
        schema_version=envelope.schema_version or SCHEMA_VERSION,
        extra=extra,
    )


def _message_bytes(message: Any) -> tuple[bytes, str]:
    if type(message) is dict:  # the common case first: hasattr probes cost on a dict
        return _json_bytes(message), JSON_CONTENT_TYPE
    if _is_protobuf_message(message):
        return message.SerializeToString(), proto_content_type(message.DESCRIPTOR.full_name)
    if isinstance(message, EncodedMessage):  # re-encoding an envelope read before
        return message.data, message.content_type
    return _json_bytes(message), JSON_CONTENT_TYPE


def _json_bytes(message: Any) -> bytes:
    try:
        return to_json(message)
    except PydanticSerializationError as exc:
        raise EnvelopeError(f"message is not JSON-serialisable: {exc}") from exc


def _message(body: bytes, content_type: str) -> Any:
    if content_type and not is_json(content_type):
        return EncodedMessage(body, content_type)
    try:
        return from_json(body)
    except ValueError as exc:
        raise MalformedEnvelopeError(f"envelope message is not valid JSON: {exc}") from exc


def _seconds_and_nanos(value: Any) -> tuple[int, int]:
    """``occurred_at`` as a Timestamp's fields; the common ``...SS.mmmZ`` form is fast."""
    global _last_second
    if isinstance(value, str) and len(value) == 24 and value[19] == "." and value[23] == "Z":
        head, millis = value[:19], value[20:23]
        cached_head, seconds = _last_second
        if head != cached_head:
            seconds = int(parse_timestamp(head + "Z").timestamp())
            _last_second = (head, seconds)
        if millis.isdigit():
            return seconds, int(millis) * 1_000_000
    moment = value if isinstance(value, datetime) else parse_timestamp(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return delta.days * 86_400 + delta.seconds, delta.microseconds * 1000


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    try:
        result: dict[str, Any] = to_jsonable_python(values)
    except PydanticSerializationError as exc:
        raise EnvelopeError(f"metadata is not JSON-serialisable: {exc}") from exc
    return result


def _plain(value: Any) -> Any:
    """Struct/ListValue contents as dicts, lists and scalars (integral numbers as ints)."""
    if isinstance(value, Struct):
        return {key: _plain(value[key]) for key in value}
    if isinstance(value, ListValue):
        return [_plain(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_INT:
        return int(value)
    return value
