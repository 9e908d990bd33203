"""The MessagePack codec: the JSON envelope's structure, in MessagePack.

Needs the ``msgpack`` extra. Fields, names and tolerant reading are those of the JSON
envelope; ``occurred_at`` is the same ISO-8601 text (a MessagePack timestamp from another
producer is accepted too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic_core import PydanticSerializationError, to_jsonable_python

from ..envelope import Envelope, MalformedEnvelopeError, _is_protobuf_message, format_timestamp
from ..errors import EnvelopeError
from .base import BinaryCodec
from .content_types import MSGPACK_CONTENT_TYPE
from .extras import require

__all__ = ("MsgpackCodec",)


@dataclass(frozen=True, slots=True, kw_only=True)
class MsgpackCodec(BinaryCodec):
    """Envelopes in MessagePack; size limit and gzip as for JSON.

    ``NatsPubsub(broker, env=..., app=..., codec=MsgpackCodec())``. Raises
    :class:`~faststream_natspubsub.MissingExtraError` when msgpack is not installed.
    """

    content_type: ClassVar[str] = MSGPACK_CONTENT_TYPE
    _msgpack: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_msgpack", require("msgpack", "msgpack"))

    def serialize(self, data: dict[str, Any]) -> bytes:
        try:
            payload: bytes = self._msgpack.packb(data, default=_jsonable, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EnvelopeError(f"envelope cannot be written as MessagePack: {exc}") from exc
        return payload

    def deserialize(self, payload: bytes) -> Envelope:
        msgpack = self._msgpack
        try:
            data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise MalformedEnvelopeError(f"not a MessagePack envelope: {exc!r}") from exc
        if not isinstance(data, dict):
            raise MalformedEnvelopeError(
                f"envelope is a MessagePack {type(data).__name__}, not a map"
            )
        occurred_at = data.get("occurred_at")
        if isinstance(occurred_at, msgpack.Timestamp):
            data["occurred_at"] = format_timestamp(occurred_at.to_datetime())
        return Envelope.from_dict(data)


def _jsonable(value: Any) -> Any:
    """Models, dataclasses and other values MessagePack does not know, as JSON values."""
    if _is_protobuf_message(value):
        raise TypeError(
            "a protobuf message cannot ride in a MessagePack envelope: use ProtobufCodec"
        )
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError as exc:
        raise TypeError(str(exc)) from exc
