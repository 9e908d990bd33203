"""The ordering key of an event, for ``subscriber(..., order_by=...)``.

``order_by`` is either a callable, given the event's ``message`` as published (the decoded
JSON object, before the handler's validation), or the name of a field: ``"subject"``,
``"topic"``, or a key of the envelope's ``metadata`` (``"tenant_id"``, ``"correlation_id"``,
a custom key...). Events whose key cannot be read (no such field, the callable raised, a
malformed envelope) share one key, ``None``: they are handled in order among themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeAlias

from .envelope import EnvelopeCodec, MalformedEnvelopeError

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ("KeyOf", "OrderBy", "key_function")

logger = logging.getLogger("faststream_natspubsub.ordering")

OrderBy: TypeAlias = "str | Callable[[Any], Hashable]"
"""What ``order_by`` accepts: a field name, or a callable on the event's message."""

KeyOf: TypeAlias = "Callable[[Msg], Hashable]"
"""The ordering key of one received message."""


def key_function(order_by: OrderBy, codec: EnvelopeCodec | None = None) -> KeyOf:
    """A function from a received message to its ordering key (``None`` if unreadable)."""
    codec = codec or EnvelopeCodec()
    if isinstance(order_by, str):
        field = order_by.strip()
        if not field:
            raise ValueError("order_by must name a field or be a callable")
        return _FieldKey(field, codec)
    if not callable(order_by):
        raise TypeError(f"order_by must be a str or a callable, not {type(order_by).__name__}")
    return _MessageKey(order_by, codec)


class _MessageKey:
    __slots__ = ("_codec", "_of")

    def __init__(self, of: Callable[[Any], Hashable], codec: EnvelopeCodec) -> None:
        self._of = of
        self._codec = codec

    def __call__(self, msg: Msg) -> Hashable:
        try:
            key = self._of(self._codec.decode(msg.data).message)
            hash(key)
        except MalformedEnvelopeError:
            return None
        except Exception:  # a user's key function failing must not stop consuming
            logger.warning(
                "order_by failed on a message of %s; its key is None", msg.subject, exc_info=True
            )
            return None
        return key


class _FieldKey:
    __slots__ = ("_codec", "_field")

    def __init__(self, field: str, codec: EnvelopeCodec) -> None:
        self._field = field
        self._codec = codec

    def __call__(self, msg: Msg) -> Hashable:
        if self._field == "subject":
            return msg.subject
        try:
            envelope = self._codec.decode(msg.data)
        except MalformedEnvelopeError:
            return None
        if self._field == "topic":
            return envelope.topic or msg.subject.split(".", 2)[-1]
        value = envelope.metadata.get(self._field)
        try:
            hash(value)
        except TypeError:  # a list or an object in the metadata: its JSON text is the key
            return repr(value)
        return value
