"""The JSON envelope around every event: model, encoding and tolerant decoding.

Wire format (SPEC section 4)::

    {"event_id": "...", "schema_version": 1, "topic": "order.created",
     "occurred_at": "2025-01-17T10:30:00.000Z", "message": {...}, "metadata": {...}}

Decoding also accepts what NatsPubsub 1.0 (TypeScript and Ruby) publishes: ``producer``
and a top-level ``trace_id`` are mapped into ``metadata``, an older ``payload`` stands in for
``message``, whole-second timestamps are fine, and unknown top-level fields are kept.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Final

from pydantic import BaseModel, RootModel
from pydantic_core import PydanticSerializationError, from_json, to_json, to_jsonable_python

from .errors import EnvelopeError, MalformedEnvelopeError, MessageTooLargeError

if TYPE_CHECKING:
    from .codecs.base import Codec

__all__ = (
    "CONTENT_ENCODING_HEADER",
    "DEFAULT_MAX_DECOMPRESSED_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "OPTIONAL_METADATA_DROP_ORDER",
    "SCHEMA_VERSION",
    "Envelope",
    "EnvelopeCodec",
    "MalformedEnvelopeError",
    "check_event_id",
    "encode_within",
    "format_timestamp",
    "message_to_payload",
    "new_event_id",
    "parse_timestamp",
    "utc_now_text",
)

SCHEMA_VERSION: Final = 1
# The NATS server's default max_payload; the limit applies to the bytes sent.
DEFAULT_MAX_MESSAGE_SIZE: Final = 1024 * 1024
# A consumer never inflates a gzip body beyond this, whatever its header claims.
DEFAULT_MAX_DECOMPRESSED_SIZE: Final = 8 * 1024 * 1024
# Dropped one by one, in this order, before a message is declared too large.
OPTIONAL_METADATA_DROP_ORDER: Final = ("app_version", "session_id", "parent_span_id", "span_id")
CONTENT_ENCODING_HEADER: Final = "Content-Encoding"

_GZIP_MAGIC: Final = b"\x1f\x8b"
_CORE_FIELDS: Final = frozenset(
    {"event_id", "schema_version", "topic", "occurred_at", "message", "payload", "metadata"}
)


@dataclass(slots=True, kw_only=True)
class Envelope:
    """One event as it travels on the wire.

    ``extra`` keeps top-level fields this package does not know (for example NatsPubsub
    1.0's ``message_type``, ``domain`` or ``resource``), so nothing is lost on a re-publish.
    """

    event_id: str
    """Unique id of the event; also the ``Nats-Msg-Id`` used for de-duplication."""
    message: Any
    """The payload, a JSON object."""
    occurred_at: datetime | None = None
    """When the event happened (UTC)."""
    topic: str | None = None
    """The topic the event was published to, without env and app."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Tracing, correlation and origin: ``trace_id``, ``correlation_id``, ``app_name``..."""
    schema_version: int = SCHEMA_VERSION
    """Version of the envelope format."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Unknown top-level fields, kept as received."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form, in wire field order."""
        data: dict[str, Any] = {"event_id": self.event_id, "schema_version": self.schema_version}
        if self.topic is not None:
            data["topic"] = self.topic
        if self.occurred_at is not None:
            data["occurred_at"] = format_timestamp(self.occurred_at)
        data["message"] = self.message
        if self.metadata:
            data["metadata"] = self.metadata
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        """Read a decoded JSON object tolerantly; raise :class:`MalformedEnvelopeError`."""
        event_id = data.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            raise MalformedEnvelopeError("envelope has no event_id string")
        if "message" in data:
            message = data["message"]
        elif "payload" in data:  # NatsPubsub 1.0's older event form
            message = data["payload"]
        else:
            raise MalformedEnvelopeError("envelope has neither 'message' nor 'payload'")

        raw_metadata = data.get("metadata")
        if raw_metadata is None:
            metadata: dict[str, Any] = {}
        elif isinstance(raw_metadata, dict):
            metadata = raw_metadata
        else:
            raise MalformedEnvelopeError("envelope 'metadata' is not an object")

        # Our own envelopes have no unknown fields: skip building the dict for them.
        extra = (
            {}
            if data.keys() <= _CORE_FIELDS
            else {k: v for k, v in data.items() if k not in _CORE_FIELDS}
        )
        if extra:
            # NatsPubsub 1.0 puts these at the top level.
            producer = extra.get("producer")
            if isinstance(producer, str) and "app_name" not in metadata:
                metadata["app_name"] = producer
            trace_id = extra.get("trace_id")
            if isinstance(trace_id, str) and "trace_id" not in metadata:
                metadata["trace_id"] = trace_id

        occurred_raw = data.get("occurred_at")
        occurred_at = None if occurred_raw is None else _parse_occurred_at(occurred_raw)
        topic = data.get("topic")
        version = data.get("schema_version", SCHEMA_VERSION)
        return cls(
            event_id=event_id,
            message=message,
            occurred_at=occurred_at,
            topic=topic if isinstance(topic, str) else None,
            metadata=metadata,
            schema_version=version if isinstance(version, int) else SCHEMA_VERSION,
            extra=extra,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopeCodec:
    """Turns envelopes into bytes and back, with the size limit and optional gzip: JSON.

    The default codec, and the base of the others (``faststream_natspubsub.codecs``), which
    change only how an envelope becomes bytes and back. ``JsonCodec`` is the same class.
    """

    content_type: ClassVar[str] = "application/json"
    """The ``content-type`` header sent with envelopes written by this codec."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """Largest encoded message (after compression) a publish may send, in bytes."""
    compress_threshold: int | None = None
    """Gzip bodies larger than this many bytes; ``None`` (default) never compresses."""
    max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE
    """A received gzip body that would inflate beyond this is malformed."""

    def encode(self, data: dict[str, Any]) -> tuple[bytes, bool]:
        """Encode an envelope dict; returns the bytes and whether they are gzipped.

        Optional metadata is dropped (in :data:`OPTIONAL_METADATA_DROP_ORDER`) while the
        result is over the limit; after that :class:`MessageTooLargeError` is raised.
        ``data["metadata"]`` may be modified.
        """
        payload, compressed = self._encode_once(data)
        if len(payload) <= self.max_message_size:
            return payload, compressed
        metadata = data.get("metadata") or {}
        for key in OPTIONAL_METADATA_DROP_ORDER:
            if metadata.pop(key, None) is not None:
                payload, compressed = self._encode_once(data)
                if len(payload) <= self.max_message_size:
                    return payload, compressed
        raise MessageTooLargeError(len(payload), self.max_message_size)

    def serialize(self, data: dict[str, Any]) -> bytes:
        """The envelope's bytes before compression, with no size rule applied."""
        try:
            return to_json(data)
        except PydanticSerializationError as exc:
            return _json_with_protobuf(data, exc)

    def _encode_once(self, data: dict[str, Any]) -> tuple[bytes, bool]:
        try:
            payload = to_json(data)
        except PydanticSerializationError as exc:
            payload = _json_with_protobuf(data, exc)
        if self.compress_threshold is not None and len(payload) > self.compress_threshold:
            return _gzip(payload), True
        return payload, False

    def decode(self, payload: bytes) -> Envelope:
        """Decode received bytes; anything unreadable raises :class:`MalformedEnvelopeError`."""
        if payload[:2] == _GZIP_MAGIC:
            payload = _bounded_gunzip(payload, self.max_decompressed_size)
        try:
            data = from_json(payload)
        except ValueError as exc:
            raise MalformedEnvelopeError(f"not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise MalformedEnvelopeError(f"envelope is a JSON {type(data).__name__}, not an object")
        return Envelope.from_dict(data)


def encode_within(
    codec: Codec, data: dict[str, Any], *, max_payload: int, headers: int
) -> tuple[bytes, bool]:
    """``codec.encode(data)`` held to what the server's ``max_payload`` leaves after
    ``headers`` bytes of headers (it counts both). Optional metadata goes first, as for the
    codec's own limit; then :class:`MessageTooLargeError` names the whole size."""
    room = max_payload - headers
    if 0 < room < codec.max_message_size and dataclasses.is_dataclass(codec):
        try:  # the codec's own rule, with the smaller limit (a codec is a frozen dataclass)
            return dataclasses.replace(codec, max_message_size=room).encode(data)
        except MessageTooLargeError as exc:
            raise MessageTooLargeError(exc.size + headers, max_payload, headers=headers) from None
    payload, compressed = codec.encode(data)
    if len(payload) > room:
        raise MessageTooLargeError(len(payload) + headers, max_payload, headers=headers)
    return payload, compressed


def message_to_payload(message: Any) -> Any:
    """Check that ``message`` serialises to a JSON object; return something ``to_json`` takes.

    Mappings, pydantic models and dataclass instances pass as they are (serialised once, with
    the envelope); anything else is converted first to find out what JSON it becomes.
    """
    if isinstance(message, dict | Mapping):
        return message
    if isinstance(message, BaseModel) and not isinstance(message, RootModel):
        return message
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        return message
    if _is_protobuf_message(message):
        return message  # the codec decides: protobuf bytes, or its JSON form
    try:
        converted = to_jsonable_python(message)
    except PydanticSerializationError as exc:
        raise EnvelopeError(
            f"message of type {type(message).__name__} is not serialisable"
        ) from exc
    if not isinstance(converted, dict):
        raise EnvelopeError(
            f"message must serialise to a JSON object, got {type(converted).__name__} "
            f"from {type(message).__name__}"
        )
    return converted


# Random bits for event ids, read from ``os.urandom`` 256 ids at a time (one system call
# instead of one per id) as hex text; a forked child starts with none of its parent's.
_ID_BLOCK: Final = 256
_random_hex: list[str] = []
os.register_at_fork(after_in_child=_random_hex.clear)
# The variant nibble of a UUIDv4 is 10xx: the two random bits pick one of these.
_VARIANT: Final = "89ab"


# Characters a header value cannot carry as they are: nats-py strips surrounding whitespace
# and turns CR/LF into spaces, so two different ids could share one Nats-Msg-Id.
_UNSENDABLE_ID: Final = re.compile(r"[\x00-\x1f\x7f]|^\s|\s$")


def check_event_id(value: Any, *, field: str = "event_id") -> str:
    """``value`` if it can travel unchanged, in the envelope and as a header; else
    :class:`EnvelopeError` saying why (an id is kept as given, never rewritten)."""
    if not isinstance(value, str) or not value:
        raise EnvelopeError(f"{field} must be a non-empty string, got {type(value).__name__}")
    if _UNSENDABLE_ID.search(value):
        raise EnvelopeError(
            f"{field} {value[:80]!r} has control characters or surrounding whitespace, "
            "which a header cannot carry unchanged"
        )
    return value


def new_event_id() -> str:
    """A fresh UUIDv4 string (random bits from ``os.urandom``, as ``uuid.uuid4`` uses)."""
    if not _random_hex:
        block = os.urandom(16 * _ID_BLOCK).hex()
        _random_hex.extend(block[i : i + 32] for i in range(0, len(block), 32))
    t = _random_hex.pop()
    return f"{t[:8]}-{t[8:12]}-4{t[13:16]}-{_VARIANT[int(t[16], 16) & 3]}{t[17:20]}-{t[20:]}"


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``: ``2025-01-17T10:30:00.000Z``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    elif moment.utcoffset():
        moment = moment.astimezone(timezone.utc)
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


_second_cache: list[Any] = [-1, ""]


def utc_now_text() -> str:
    """``format_timestamp(now)``, fast: the seconds part is formatted once per second."""
    now = time.time()
    seconds = int(now)
    if seconds != _second_cache[0]:
        _second_cache[0] = seconds
        _second_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{_second_cache[1]}.{int((now - seconds) * 1000):03d}Z"


def parse_timestamp(value: str) -> datetime:
    """Parse ISO-8601 with or without fraction, ``Z`` or an offset; naive means UTC."""
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _parse_occurred_at(value: Any) -> datetime:
    if not isinstance(value, str):
        raise MalformedEnvelopeError("envelope 'occurred_at' is not a string")
    try:
        # In UTC at once: a time at the calendar's edge with an offset has no UTC form, and
        # would fail later, where it is formatted or compared (the DLQ record, the latency).
        return parse_timestamp(value).astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise MalformedEnvelopeError(f"envelope 'occurred_at' is not ISO-8601: {value!r}") from exc


def _is_protobuf_message(value: Any) -> bool:
    """A generated protobuf message, told without importing protobuf."""
    return hasattr(value, "SerializeToString") and hasattr(type(value), "DESCRIPTOR")


def _json_with_protobuf(data: dict[str, Any], error: PydanticSerializationError) -> bytes:
    """JSON of an envelope whose message is a protobuf message (its canonical JSON form)."""
    if not _is_protobuf_message(data.get("message")):
        raise EnvelopeError(f"message is not JSON-serialisable: {error}") from error
    from .codecs.message import protobuf_to_dict  # only when protobuf is in use

    return to_json({**data, "message": protobuf_to_dict(data["message"])})


def _gzip(payload: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(payload) + compressor.flush()


def _bounded_gunzip(payload: bytes, limit: int) -> bytes:
    """Inflate at most ``limit`` bytes; a bomb is refused before it fills memory."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        result = inflater.decompress(payload, limit + 1)
    except zlib.error as exc:
        raise MalformedEnvelopeError(f"gzip body cannot be decompressed: {exc}") from exc
    if len(result) > limit or inflater.unconsumed_tail:
        raise MalformedEnvelopeError(f"gzip body inflates beyond {limit} bytes")
    if not inflater.eof:
        raise MalformedEnvelopeError("gzip body is truncated")
    return result
