"""What a codec is, and the base of the codecs other than JSON.

Every codec shares the size rule and compression of :class:`EnvelopeCodec` (the JSON codec):
the limit applies to the bytes sent, after compression; optional metadata is dropped before
an envelope is declared too large; a gzip body is recognised by its magic bytes and inflated
within a bound. A codec only decides how an envelope dict becomes bytes and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..envelope import _GZIP_MAGIC, EnvelopeCodec, _bounded_gunzip, _gzip

if TYPE_CHECKING:
    from ..envelope import Envelope

__all__ = ("BinaryCodec", "Codec", "EnvelopeSize", "measure")


@runtime_checkable
class Codec(Protocol):
    """Turns envelope dicts into bytes and bytes into :class:`Envelope` objects.

    ``encode`` applies the size limit (after compression) and returns the bytes and whether
    they are gzipped; ``serialize`` gives the bytes before compression, with no size rule.
    """

    @property
    def content_type(self) -> str:
        """The ``content-type`` header sent with the bytes this codec writes."""

    @property
    def max_message_size(self) -> int:
        """Largest message, in bytes after compression, a publish may send."""

    def encode(self, data: dict[str, Any]) -> tuple[bytes, bool]:
        """The bytes to send and whether they are gzipped; may drop optional metadata."""

    def serialize(self, data: dict[str, Any]) -> bytes:
        """The envelope's bytes before compression."""

    def decode(self, payload: bytes) -> Envelope:
        """Received bytes as an envelope; raises ``MalformedEnvelopeError``."""


@dataclass(frozen=True, slots=True)
class EnvelopeSize:
    """The size of one envelope in a codec, before and after compression."""

    serialized: int
    """Bytes before compression."""
    sent: int
    """Bytes on the wire (what the size limit counts)."""
    compressed: bool
    """Whether the sent bytes are gzipped."""


def measure(codec: Codec, data: dict[str, Any]) -> EnvelopeSize:
    """Sizes of ``data`` in ``codec``; raises ``MessageTooLargeError`` as ``encode`` would."""
    serialized = len(codec.serialize(data))
    payload, compressed = codec.encode(dict(data, metadata=dict(data.get("metadata") or {})))
    return EnvelopeSize(serialized=serialized, sent=len(payload), compressed=compressed)


@dataclass(frozen=True, slots=True, kw_only=True)
class BinaryCodec(EnvelopeCodec):
    """Base of the codecs other than JSON: subclasses give ``serialize`` and ``deserialize``."""

    def serialize(self, data: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def deserialize(self, payload: bytes) -> Envelope:
        """Uncompressed bytes as an envelope; raises ``MalformedEnvelopeError``."""
        raise NotImplementedError

    def _encode_once(self, data: dict[str, Any]) -> tuple[bytes, bool]:
        payload = self.serialize(data)
        if self.compress_threshold is not None and len(payload) > self.compress_threshold:
            return _gzip(payload), True
        return payload, False

    def decode(self, payload: bytes) -> Envelope:
        # No protobuf or MessagePack envelope starts with the gzip magic bytes (0x1f is an
        # invalid protobuf tag and a lone integer in MessagePack), so the check is safe.
        if payload[:2] == _GZIP_MAGIC:
            payload = _bounded_gunzip(payload, self.max_decompressed_size)
        return self.deserialize(payload)
