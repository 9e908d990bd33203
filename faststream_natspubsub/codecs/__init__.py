"""Envelope codecs: JSON (the default), Protocol Buffers and MessagePack.

An app chooses what it writes (``NatsPubsub(..., codec=ProtobufCodec())``); consumers read
every codec by the ``content-type`` header, and JSON when there is none. ``ProtobufCodec``
needs the ``protobuf`` extra and ``MsgpackCodec`` the ``msgpack`` extra; both classes import
without them and raise :class:`~faststream_natspubsub.MissingExtraError` when created.
"""

from ..envelope import EnvelopeCodec
from .annotations import ProtobufMessage
from .base import BinaryCodec, Codec, EnvelopeSize, measure
from .content_types import (
    JSON_CONTENT_TYPE,
    MSGPACK_CONTENT_TYPE,
    PROTOBUF_CONTENT_TYPE,
    WireFormat,
    proto_content_type,
)
from .message import EncodedMessage
from .msgpack import MsgpackCodec
from .protobuf import ProtobufCodec
from .reader import CodecReader

JsonCodec = EnvelopeCodec
"""The JSON codec, the default: another name of :class:`EnvelopeCodec`."""

__all__ = (
    "JSON_CONTENT_TYPE",
    "MSGPACK_CONTENT_TYPE",
    "PROTOBUF_CONTENT_TYPE",
    "BinaryCodec",
    "Codec",
    "CodecReader",
    "EncodedMessage",
    "EnvelopeSize",
    "JsonCodec",
    "MsgpackCodec",
    "ProtobufCodec",
    "ProtobufMessage",
    "WireFormat",
    "measure",
    "proto_content_type",
)
