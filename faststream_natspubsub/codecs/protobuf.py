"""The Protocol Buffers codec: ``natspubsub.v1.Envelope`` (``envelope.proto``) on the wire.

Needs the ``protobuf`` extra. The event's message rides inside as bytes with its own content
type: a protobuf message is sent as its serialized bytes, anything else as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .base import BinaryCodec
from .content_types import PROTOBUF_CONTENT_TYPE
from .extras import require

if TYPE_CHECKING:
    from ..envelope import Envelope

__all__ = ("ProtobufCodec",)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtobufCodec(BinaryCodec):
    """Envelopes as ``natspubsub.v1.Envelope``; size limit and gzip as for JSON.

    ``NatsPubsub(broker, env=..., app=..., codec=ProtobufCodec())``. Raises
    :class:`~faststream_natspubsub.MissingExtraError` when protobuf is not installed.
    """

    content_type: ClassVar[str] = PROTOBUF_CONTENT_TYPE
    _backend: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        require("protobuf", "google.protobuf")
        from . import _protobuf

        object.__setattr__(self, "_backend", _protobuf)

    def serialize(self, data: dict[str, Any]) -> bytes:
        result: bytes = self._backend.serialize(data)
        return result

    def deserialize(self, payload: bytes) -> Envelope:
        result: Envelope = self._backend.deserialize(payload)
        return result
