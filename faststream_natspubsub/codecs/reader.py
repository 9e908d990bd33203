"""Picks the codec of a received envelope by its ``content-type`` header.

Consumers read every codec whatever their own: the app's codec decides only what it writes.
No header, ``application/json`` or anything unknown is JSON (NatsPubsub 1.0 sets no header),
so the JSON path costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from ..envelope import DEFAULT_MAX_DECOMPRESSED_SIZE, EnvelopeCodec, MalformedEnvelopeError
from ..errors import MissingExtraError
from .content_types import (
    CONTENT_TYPE_HEADER,
    ENVELOPE_PROTO_NAME,
    JSON_CONTENT_TYPE,
    WireFormat,
    proto_name,
    wire_format,
)

if TYPE_CHECKING:
    from ..envelope import Envelope
    from .base import Codec

__all__ = ("CodecReader", "content_type_of")

# Spellings of known formats remembered; received headers are untrusted, so bounded.
_MAX_REMEMBERED: Final = 32
_CAPITALISED_HEADER: Final = "Content-Type"


def content_type_of(headers: Mapping[str, str] | None) -> str | None:
    """The ``content-type`` of NATS headers (FastStream's spelling, or capitalised)."""
    if not headers:
        return None
    return headers.get(CONTENT_TYPE_HEADER) or headers.get(_CAPITALISED_HEADER)


class CodecReader:
    """Decodes received envelopes of any codec, with the limits of the app's codec."""

    __slots__ = ("_formats", "_limits", "by_type", "json")

    def __init__(self, codec: Codec | None = None) -> None:
        codec = codec or EnvelopeCodec()
        self._limits = {
            "max_decompressed_size": getattr(
                codec, "max_decompressed_size", DEFAULT_MAX_DECOMPRESSED_SIZE
            )
        }
        self.json: Codec = codec if type(codec) is EnvelopeCodec else EnvelopeCodec(**self._limits)
        # Exact header values to codecs: the hot paths look here first, in one dict lookup.
        self.by_type: dict[str | None, Codec] = {
            None: self.json,
            "": self.json,
            JSON_CONTENT_TYPE: self.json,
        }
        self._formats: dict[WireFormat, Codec] = {WireFormat.JSON: self.json}
        if codec is not self.json:
            self.by_type[codec.content_type] = codec
            self._formats[wire_format(codec.content_type)] = codec

    def decode(self, payload: bytes, content_type: str | None) -> Envelope:
        """Decode ``payload`` sent with ``content_type``; raises ``MalformedEnvelopeError``."""
        codec = self.by_type.get(content_type)
        if codec is None:
            codec = self.codec_for(content_type)
        return codec.decode(payload)

    def decode_headers(self, payload: bytes, headers: Mapping[str, str] | None) -> Envelope:
        """Decode ``payload`` received with these NATS headers."""
        return self.decode(payload, content_type_of(headers))

    def codec_for(self, content_type: str | None) -> Codec:
        """The codec that reads ``content_type``; JSON when it is absent or unknown."""
        codec = self.by_type.get(content_type)
        if codec is not None:
            return codec
        assert content_type is not None
        kind = wire_format(content_type)
        if kind is WireFormat.PROTOBUF:
            name = proto_name(content_type)
            if name is not None and name != ENVELOPE_PROTO_NAME:
                raise MalformedEnvelopeError(
                    f"a bare protobuf {name} is not an envelope (expected {ENVELOPE_PROTO_NAME})"
                )
        codec = self._formats.get(kind) or self._create(kind)
        if len(self.by_type) < _MAX_REMEMBERED:
            self.by_type[content_type] = codec
        return codec

    def _create(self, kind: WireFormat) -> Codec:
        codec: Any
        try:
            if kind is WireFormat.PROTOBUF:
                from .protobuf import ProtobufCodec

                codec = ProtobufCodec(**self._limits)
            else:
                from .msgpack import MsgpackCodec

                codec = MsgpackCodec(**self._limits)
        except MissingExtraError as exc:
            # Unreadable here, not broken: the DLQ keeps it for a replay after installing.
            raise MalformedEnvelopeError(f"a {kind.value} envelope cannot be read: {exc}") from exc
        self._formats[kind] = codec
        result: Codec = codec
        return result
