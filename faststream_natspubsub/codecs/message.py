"""The message inside an envelope when it is not JSON, and turning it into what a handler wants.

A protobuf envelope carries its message as bytes with a content type. JSON bodies are decoded
at once (handlers get the same dict as from a JSON envelope); a protobuf body stays an
:class:`EncodedMessage` until the handler's annotation says what to make of it: an instance of
that generated class, or a dict (the message's canonical JSON form) for a pydantic model.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, get_args, get_origin

from ..envelope import MalformedEnvelopeError, _is_protobuf_message
from .content_types import is_protobuf, proto_name
from .extras import require

if TYPE_CHECKING:
    from google.protobuf.message import Message

__all__ = (
    "EncodedMessage",
    "is_protobuf_class",
    "message_for",
    "protobuf_class_of",
    "protobuf_to_dict",
    "to_jsonable",
)


@dataclass(frozen=True, slots=True)
class EncodedMessage:
    """A message kept as the bytes it arrived as, with their content type."""

    data: bytes
    """The message's bytes."""
    content_type: str
    """Their media type, e.g. ``application/protobuf; proto=orders.v1.OrderPlaced``."""

    @property
    def proto_name(self) -> str | None:
        """Full name of the protobuf message type, when the content type gives one."""
        return proto_name(self.content_type)


def is_protobuf_class(annotation: Any) -> bool:
    """Whether ``annotation`` is a generated protobuf message class."""
    return isinstance(annotation, type) and _is_protobuf_class(annotation)


def protobuf_class_of(annotation: Any) -> type | None:
    """The generated class of ``annotation`` (``Cls`` or ``ProtobufMessage[Cls]``), if any."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation if is_protobuf_class(annotation) else None


def _is_protobuf_class(cls: type) -> bool:
    return hasattr(cls, "DESCRIPTOR") and hasattr(cls, "FromString")


def message_for(message: Any, target: type | None) -> Any:
    """``message`` as the handler annotated with ``target`` needs it.

    A protobuf class gets an instance (parsed from protobuf bytes, or from a JSON object);
    anything else gets JSON values, a protobuf body becoming its canonical JSON form.
    Raises :class:`MalformedEnvelopeError` when that cannot be done: retrying cannot help.
    """
    if target is not None and is_protobuf_class(target):
        return _as_protobuf(message, target)
    if isinstance(message, EncodedMessage):
        return protobuf_to_dict(_parse_known(message))
    return message


def protobuf_to_dict(message: Message) -> dict[str, Any]:
    """The canonical JSON form of ``message``, with field names as in the ``.proto`` file."""
    json_format = require("protobuf", "google.protobuf.json_format")
    result: dict[str, Any] = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return result


def to_jsonable(message: Any) -> Any:
    """``message`` for display (DLQ tools): a protobuf body decoded when its type is known."""
    if not isinstance(message, EncodedMessage):
        return message
    try:
        return protobuf_to_dict(_parse_known(message))
    except MalformedEnvelopeError as exc:
        return {
            "content_type": message.content_type,
            "base64": base64.b64encode(message.data).decode("ascii"),
            "undecoded": str(exc),
        }


def _as_protobuf(message: Any, target: type) -> Any:
    full_name = target.DESCRIPTOR.full_name  # type: ignore[attr-defined]
    if isinstance(message, EncodedMessage):
        if not is_protobuf(message.content_type):
            raise MalformedEnvelopeError(
                f"message is {message.content_type!r}, the handler wants protobuf {full_name}"
            )
        sent = message.proto_name
        if sent is not None and sent != full_name:
            raise MalformedEnvelopeError(f"message is {sent}, the handler wants {full_name}")
        return _parse(target, message.data, full_name)
    if _is_protobuf_message(message) and isinstance(message, target):
        return message
    if isinstance(message, dict):  # a JSON envelope, from a JSON publisher
        json_format = require("protobuf", "google.protobuf.json_format")
        try:
            return json_format.ParseDict(message, target(), ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise MalformedEnvelopeError(f"message does not fit {full_name}: {exc}") from exc
    raise MalformedEnvelopeError(
        f"message of type {type(message).__name__} cannot become protobuf {full_name}"
    )


def _parse_known(message: EncodedMessage) -> Message:
    """Parse a protobuf body whose type the process knows (its generated module imported)."""
    if not is_protobuf(message.content_type):
        raise MalformedEnvelopeError(f"message content type {message.content_type!r} is unknown")
    name = message.proto_name
    if name is None:
        raise MalformedEnvelopeError(
            f"protobuf message without a type name ({message.content_type!r}): "
            "annotate the handler with its generated class"
        )
    pool = require("protobuf", "google.protobuf.descriptor_pool")
    factory = require("protobuf", "google.protobuf.message_factory")
    try:
        descriptor = pool.Default().FindMessageTypeByName(name)
    except KeyError:
        raise MalformedEnvelopeError(
            f"protobuf message type {name} is unknown here: import its generated module, "
            "or annotate the handler with its class"
        ) from None
    parsed: Message = _parse(factory.GetMessageClass(descriptor), message.data, name)
    return parsed


def _parse(cls: Any, data: bytes, name: str) -> Any:
    decode_error = require("protobuf", "google.protobuf.message").DecodeError
    try:
        return cls.FromString(data)
    except decode_error as exc:
        raise MalformedEnvelopeError(f"message is not a valid {name}: {exc}") from exc
