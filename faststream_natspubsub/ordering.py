"""The ordering key of an event, for ``subscriber(..., order_by=...)``.

``order_by`` is either a callable, given the event's ``message`` as published (the decoded
JSON object, before the handler's validation; a protobuf message as its JSON form), or the
name of a field: ``"subject"``, ``"topic"`` (the subject's, never the envelope's claim), or a
key of the envelope's ``metadata`` (``"tenant_id"``, ``"correlation_id"``, a custom key...).
Events whose key cannot be read (no such field, the callable raised, a malformed envelope)
share one key, ``None``: they are handled in order among themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from pydantic_core import from_json

from .codecs.message import message_for
from .codecs.reader import CodecReader, content_type_of
from .envelope import MalformedEnvelopeError
from .subjects import parse_subject

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from .codecs.base import Codec

__all__ = ("KeyOf", "OrderBy", "key_function")

logger = logging.getLogger("faststream_natspubsub.ordering")

_GZIP_MAGIC: Final = b"\x1f\x8b"

OrderBy: TypeAlias = "str | Callable[[Any], Hashable]"
"""What ``order_by`` accepts: a field name, or a callable on the event's message."""

KeyOf: TypeAlias = "Callable[[Msg], Hashable]"
"""The ordering key of one received message."""


def key_function(order_by: OrderBy, codec: Codec | CodecReader | None = None) -> KeyOf:
    """A function from a received message to its ordering key (``None`` if unreadable).

    ``codec`` is the app's (its limits apply); envelopes of every codec are read, by their
    content type, as the envelope middleware reads them.
    """
    reader = codec if isinstance(codec, CodecReader) else CodecReader(codec)
    if isinstance(order_by, str):
        field = order_by.strip()
        if not field:
            raise ValueError("order_by must name a field or be a callable")
        return _FieldKey(field, reader)
    if not callable(order_by):
        raise TypeError(f"order_by must be a str or a callable, not {type(order_by).__name__}")
    return _MessageKey(order_by, reader)


class _MessageKey:
    __slots__ = ("_of", "_reader")

    def __init__(self, of: Callable[[Any], Hashable], reader: CodecReader) -> None:
        self._of = of
        self._reader = reader

    def __call__(self, msg: Msg) -> Hashable:
        try:
            key = self._of(_message_of(msg, self._reader))
            hash(key)
        except MalformedEnvelopeError:
            return None
        except Exception:  # a user's key function failing must not stop consuming
            logger.warning(
                "order_by failed on a message of %s; its key is None", msg.subject, exc_info=True
            )
            return None
        return key


def _message_of(msg: Msg, reader: CodecReader) -> Any:
    """The envelope's ``message`` (or older ``payload``), as the envelope middleware reads it.

    From the JSON alone when the body is uncompressed JSON: no envelope object is built for a
    key (the envelope middleware builds one anyway).
    """
    data = msg.data
    codec = reader.by_type.get(content_type_of(msg.headers))
    if codec is not reader.json or data[:2] == _GZIP_MAGIC:
        return message_for(reader.decode_headers(data, msg.headers).message, None)
    try:
        envelope = from_json(data)
    except ValueError as exc:
        raise MalformedEnvelopeError("not valid JSON") from exc
    if not isinstance(envelope, dict) or not isinstance(envelope.get("event_id"), str):
        raise MalformedEnvelopeError("not an envelope")
    if "message" in envelope:
        return envelope["message"]
    if "payload" in envelope:
        return envelope["payload"]
    raise MalformedEnvelopeError("envelope has neither 'message' nor 'payload'")


class _FieldKey:
    __slots__ = ("_field", "_reader")

    def __init__(self, field: str, reader: CodecReader) -> None:
        self._field = field
        self._reader = reader

    def __call__(self, msg: Msg) -> Hashable:
        if self._field == "subject":
            return msg.subject
        if self._field == "topic":
            try:
                return parse_subject(msg.subject).topic
            except ValueError:
                return msg.subject
        try:
            envelope = self._reader.decode_headers(msg.data, msg.headers)
        except MalformedEnvelopeError:
            return None
        value = envelope.metadata.get(self._field)
        try:
            hash(value)
        except TypeError:  # a list or an object in the metadata: its JSON text is the key
            return repr(value)
        return value
