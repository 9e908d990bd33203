"""What the AsyncAPI document says about a codec: the content type, and the protobuf schema."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .content_types import ENVELOPE_PROTO_NAME, WireFormat, wire_format

if TYPE_CHECKING:
    from .base import Codec

__all__ = ("PROTO_FILE", "PROTO_SCHEMA_NAME", "annotate_message")

PROTO_FILE: Final = Path(__file__).with_name("envelope.proto")
PROTO_SCHEMA_NAME: Final = "NatsPubsubEnvelopeProto"
_PROTO_SCHEMA_FORMAT: Final = "application/vnd.google.protobuf;version=3"
_PROTO_MARK: Final = "x-natspubsub-protobuf"


def annotate_message(message: dict[str, Any], codec: Codec, document: dict[str, Any]) -> None:
    """Set ``contentType`` of a NatsPubsub message; point protobuf envelopes at the .proto.

    The payload stays the envelope's JSON schema (the structure every codec carries); with
    protobuf, the message's ``x-natspubsub-protobuf`` names the envelope message and its
    schema, which AsyncAPI 3.0 documents hold as a protobuf multi-format schema.
    """
    message["contentType"] = codec.content_type
    if wire_format(codec.content_type) is not WireFormat.PROTOBUF:
        return
    reference: dict[str, Any] = {
        "message": ENVELOPE_PROTO_NAME,
        "file": "faststream_natspubsub/codecs/envelope.proto",
        "messageField": "message (bytes), typed by message_content_type",
    }
    if not str(document.get("asyncapi", "")).startswith("2."):
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault(
            PROTO_SCHEMA_NAME,
            {"schemaFormat": _PROTO_SCHEMA_FORMAT, "schema": PROTO_FILE.read_text("utf-8")},
        )
        reference["schema"] = {"$ref": f"#/components/schemas/{PROTO_SCHEMA_NAME}"}
    message[_PROTO_MARK] = reference
