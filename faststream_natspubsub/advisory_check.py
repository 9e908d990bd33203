"""Whether a MAX_DELIVERIES advisory is believable, checked against the server before acting.

An advisory is a message like any other: a peer allowed to publish on
``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<durable>`` can forge one naming any
sequence, and dead-lettering on its word would copy an event that was handled into the DLQ
(and an operator's replay would run it again). Before writing a record, the watcher checks
what the server and the inbox can confirm:

- the advisory's own ``stream`` and ``consumer`` are those of the subject it came on;
- the consumer exists, its ``max_deliver`` is the advisory's ``deliveries``, and it has
  delivered the sequence (``delivered.stream_seq`` is at or past it);
- the message is in the stream and its subject is one the consumer's filter selects;
- with an inbox, the event is not marked processed for that durable and topic.

What no check can rule out: a forged advisory, consistent in every field, for an event the
consumer delivered and handled without an inbox (the server keeps no per-message outcome
that a client can read). The record it causes is a copy, not a loss; a replay of it runs the
handler again unless an inbox recognises it. Deny publishing on ``$JS.EVENT.>`` to every
client but the server (see the permissions in the docs) to close that door.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from nats.js.errors import NotFoundError

from .codecs.reader import CodecReader
from .envelope import MalformedEnvelopeError
from .inbox import inbox_key

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from .advisory_read import DeliveredEvent
    from .codecs.base import Codec

__all__ = ("ProcessedReporter", "advisory_doubt", "subject_matches")


@runtime_checkable
class ProcessedReporter(Protocol):
    """Optional for an inbox store: whether a key is marked processed, without claiming it."""

    async def is_processed(self, key: str) -> bool:
        """True when ``key`` is marked processed."""
        ...


async def advisory_doubt(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    advisory: dict[str, Any],
    message: DeliveredEvent,
    inbox: object | None,
    codec: Codec,
) -> str | None:
    """Why the advisory about ``message`` is not to be believed; ``None`` when it checks out.

    ``stream`` and ``durable`` come from the subscription's subject, ``advisory`` is the
    parsed body, ``message`` the stream's message at the advisory's sequence, as a reader
    filtered like the consumer handed it over.
    """
    if advisory.get("stream") != stream or advisory.get("consumer") != durable:
        return "its stream or consumer is not the one its subject names"
    seq, deliveries = advisory["stream_seq"], advisory.get("deliveries")
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return f"consumer {durable} does not exist on {stream}"
    if info.config.max_deliver != deliveries:
        limit = info.config.max_deliver
        return f"it says {deliveries} deliveries, the consumer's max_deliver is {limit}"
    delivered = info.delivered.stream_seq if info.delivered is not None else None
    if delivered is None or delivered < seq:
        return f"the consumer has not delivered sequence {seq} yet"
    filters = [info.config.filter_subject] if info.config.filter_subject else []
    filters += list(info.config.filter_subjects or ())
    subject = message.subject or ""
    if filters and not any(subject_matches(f, subject) for f in filters):
        return f"the message at {seq} ({subject}) is not one the consumer reads"
    if isinstance(inbox, ProcessedReporter):
        try:
            event_id = (
                CodecReader(codec).decode_headers(message.data or b"", message.headers).event_id
            )
        except MalformedEnvelopeError:
            return None
        if await inbox.is_processed(inbox_key(f"{durable}.", subject, event_id)):
            return f"the inbox says event {event_id} was processed"
    return None


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    wanted, parts = pattern.split("."), subject.split(".")
    for index, part in enumerate(wanted):
        if part == ">":
            return len(parts) > index
        if index >= len(parts) or part not in ("*", parts[index]):
            return False
    return len(parts) == len(wanted)
