"""Media types of envelopes and of the messages inside them, and how a received one is read.

A received ``content-type`` is untrusted text: it only selects one of the known codecs, and
anything unknown (or absent, as from NatsPubsub 1.0) is read as JSON, as before codecs
existed.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

__all__ = (
    "CONTENT_TYPE_HEADER",
    "ENVELOPE_PROTO_NAME",
    "JSON_CONTENT_TYPE",
    "MSGPACK_CONTENT_TYPE",
    "PROTOBUF_CONTENT_TYPE",
    "WireFormat",
    "is_json",
    "is_protobuf",
    "media_type",
    "proto_content_type",
    "proto_name",
    "wire_format",
)

# The header FastStream reads into ``StreamMessage.content_type`` (and writes).
CONTENT_TYPE_HEADER: Final = "content-type"
ENVELOPE_PROTO_NAME: Final = "natspubsub.v1.Envelope"
JSON_CONTENT_TYPE: Final = "application/json"
PROTOBUF_CONTENT_TYPE: Final = f"application/protobuf; proto={ENVELOPE_PROTO_NAME}"
MSGPACK_CONTENT_TYPE: Final = "application/msgpack"

_PROTOBUF_TYPES: Final = frozenset(
    {"application/protobuf", "application/x-protobuf", "application/vnd.google.protobuf"}
)
_MSGPACK_TYPES: Final = frozenset(
    {"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"}
)
# Parameters that name the protobuf message type, as different producers spell them.
_PROTO_PARAMETERS: Final = ("proto", "messagetype", "type")
# A header value longer than this is not a media type worth parsing.
_MAX_CONTENT_TYPE: Final = 512


class WireFormat(str, Enum):
    """How an envelope is serialized."""

    JSON = "json"
    """UTF-8 JSON object (the default, and NatsPubsub 1.0's format)."""
    PROTOBUF = "protobuf"
    """``natspubsub.v1.Envelope`` in Protocol Buffers."""
    MSGPACK = "msgpack"
    """The JSON envelope's structure in MessagePack."""


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """``("type/subtype", {param: value})``, lower-cased names; values keep their case."""
    base, _, rest = content_type[:_MAX_CONTENT_TYPE].partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            params[name.strip().lower()] = value.strip().strip('"')
    return base.strip().lower(), params


def wire_format(content_type: str | None) -> WireFormat:
    """The format a received envelope claims; JSON for anything absent or unknown."""
    if not content_type:
        return WireFormat.JSON
    base, _ = media_type(content_type)
    if base in _PROTOBUF_TYPES:
        return WireFormat.PROTOBUF
    if base in _MSGPACK_TYPES:
        return WireFormat.MSGPACK
    return WireFormat.JSON


def proto_content_type(full_name: str) -> str:
    """The content type of a serialized protobuf message named ``full_name``."""
    return f"application/protobuf; proto={full_name}"


def proto_name(content_type: str) -> str | None:
    """The protobuf message name a content type gives, if it is a protobuf one."""
    base, params = media_type(content_type)
    if base not in _PROTOBUF_TYPES:
        return None
    for name in _PROTO_PARAMETERS:
        if value := params.get(name):
            return value
    return None


def is_json(content_type: str) -> bool:
    """Whether ``content_type`` names JSON (``application/json``, ``...+json``)."""
    if content_type == JSON_CONTENT_TYPE:
        return True
    base = media_type(content_type)[0]
    return base == JSON_CONTENT_TYPE or base.endswith("+json")


def is_protobuf(content_type: str) -> bool:
    """Whether ``content_type`` names protobuf bytes."""
    return media_type(content_type)[0] in _PROTOBUF_TYPES
