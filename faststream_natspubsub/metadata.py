"""What a handler learns about the event it is handling, besides the message itself."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from nats.errors import Error as NatsError

from .replay import REPLAY_COUNT_HEADER
from .subjects import parse_subject

if TYPE_CHECKING:
    from faststream import ContextRepo
    from faststream.message import StreamMessage

    from .envelope import Envelope

__all__ = (
    "EVENT_CONTEXT_KEY",
    "EventMetadata",
    "InboundEvent",
    "correlation_of",
    "current_inbound",
)

# FastStream context key under which the event being handled is set (``context.set_local``)
# while its handler runs; the handler's annotations and publishes read it from there.
EVENT_CONTEXT_KEY: Final = "natspubsub_event"


def current_inbound(context: ContextRepo) -> InboundEvent | None:
    """The event whose handler is running in this task, if any."""
    event: InboundEvent | None = context.get_local(EVENT_CONTEXT_KEY)
    return event


def correlation_of(metadata: Mapping[str, Any], event_id: str) -> str:
    """An event's correlation id: its metadata's, or its own event id when it names none."""
    value = metadata.get("correlation_id")
    return value if isinstance(value, str) and value else event_id


@dataclass(frozen=True, slots=True, kw_only=True)
class EventMetadata:
    """Delivery facts and envelope metadata of the event being handled.

    Ask for it in a handler with the ``EventMetadata`` annotation exported by the package::

        @pubsub.subscriber("order.created")
        async def handle(order: Order, meta: EventMetadata) -> None: ...
    """

    subject: str
    """Full NATS subject, ``<env>.<app>.<topic>``."""
    topic: str
    """The topic part of the subject: the subject is the truth, whatever the envelope says
    (``claimed_topic`` has the envelope's ``topic``)."""
    event_id: str
    """The envelope's event id."""
    occurred_at: datetime | None
    """When the publisher says the event happened."""
    received_at: datetime
    """When this process received this delivery."""
    stream: str | None = None
    """JetStream stream that stored the event (``None`` outside JetStream)."""
    stream_seq: int | None = None
    """Sequence of the event in its stream."""
    consumer_seq: int | None = None
    """Sequence of this delivery in the consumer."""
    deliveries: int = 1
    """How many times this event has been delivered to this consumer, this time included."""
    pending: int | None = None
    """Messages still pending on the consumer after this one."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """NATS headers of this delivery."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """The envelope's whole ``metadata`` object, custom keys included (as the publisher
    wrote it: ``app_name`` and ``environment`` in here are claims, not facts)."""
    app: str | None = None
    """The app token of the subject: the app whose subjects the event was published on."""
    env: str | None = None
    """The env token of the subject."""
    claimed_topic: str | None = None
    """The envelope's own ``topic`` field, which any publisher can set to anything."""

    @property
    def replay_count(self) -> int:
        """How many times this event was replayed from a dead-letter queue (0: never)."""
        value = self.headers.get(REPLAY_COUNT_HEADER)
        if value is None:  # replays of earlier versions wrote it into the metadata
            value = self.metadata.get("replay_count")
        text = str(value).strip() if value is not None else ""
        return int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0

    @property
    def trace_id(self) -> str | None:
        """Distributed trace id."""
        return self._get("trace_id")

    @property
    def span_id(self) -> str | None:
        """Span id of the publish."""
        return self._get("span_id")

    @property
    def parent_span_id(self) -> str | None:
        """Parent of the publishing span."""
        return self._get("parent_span_id")

    @property
    def correlation_id(self) -> str:
        """Correlation id, carried from event to event; FastStream's ``message.correlation_id``.

        An event that names none starts its own chain: its correlation id is its event id.
        """
        return correlation_of(self.metadata, self.event_id)

    @property
    def causation_id(self) -> str | None:
        """Event id of the event that caused this one."""
        return self._get("causation_id")

    @property
    def user_id(self) -> str | None:
        """User on whose behalf the event was published."""
        return self._get("user_id")

    @property
    def tenant_id(self) -> str | None:
        """Tenant of the event."""
        return self._get("tenant_id")

    @property
    def session_id(self) -> str | None:
        """Session of the event."""
        return self._get("session_id")

    @property
    def app_name(self) -> str | None:
        """Application that published the event: the subject's app token.

        The envelope's ``metadata.app_name`` is only what the publisher claims; it is used
        when there is no subject to read (``metadata["app_name"]`` always has the claim).
        """
        return self.app if self.app is not None else self._get("app_name")

    @property
    def app_version(self) -> str | None:
        """Version of the publishing application."""
        return self._get("app_version")

    @property
    def environment(self) -> str | None:
        """Environment of the event: the subject's env token (else the envelope's claim)."""
        return self.env if self.env is not None else self._get("environment")

    def _get(self, key: str) -> str | None:
        value = self.metadata.get(key)
        return None if value is None else str(value)


class InboundEvent:
    """The decoded envelope of the message being handled, kept in FastStream's context.

    :class:`EventMetadata` is built on first use only, so handlers that do not ask for it
    do not pay for it.
    """

    __slots__ = ("_headers", "_metadata", "_received", "envelope", "raw", "subject")

    def __init__(
        self,
        message: StreamMessage[Any],
        envelope: Envelope,
        subject: str,
        *,
        raw: Any = None,
        received_at: datetime | None = None,
    ) -> None:
        # Only the message's headers, not the message: what holds this object must not be
        # reachable back from it (a reference cycle per message is garbage-collector work,
        # costly with many handlers in flight).
        self.envelope = envelope
        self.subject = subject
        # The nats-py message of this event: the batch's item, or the message itself.
        self.raw = message.raw_message if raw is None else raw
        self._headers: Mapping[str, str] | None = message.headers if raw is None else None
        # A float now, a datetime only if someone asks: most handlers never do.
        self._received: float | datetime = received_at or time.time()
        self._metadata: EventMetadata | None = None

    @property
    def received_at(self) -> datetime:
        """When this process received the delivery (UTC)."""
        if isinstance(self._received, float):
            self._received = datetime.fromtimestamp(self._received, timezone.utc)
        return self._received

    @property
    def metadata(self) -> EventMetadata:
        """Delivery facts plus envelope metadata (built once)."""
        if self._metadata is None:
            self._metadata = self._build_metadata()
        return self._metadata

    @property
    def deliveries(self) -> int:
        """Delivery count from JetStream; 1 outside JetStream (in-memory tests)."""
        return self.metadata.deliveries

    def _build_metadata(self) -> EventMetadata:
        envelope = self.envelope
        stream = stream_seq = consumer_seq = pending = None
        deliveries = 1
        try:
            js = self.raw.metadata
        except (NatsError, AttributeError):  # core NATS or in-memory message
            pass
        else:
            stream, deliveries, pending = js.stream, js.num_delivered, js.num_pending
            stream_seq, consumer_seq = js.sequence.stream, js.sequence.consumer
        headers = self._headers if self._headers is not None else (self.raw.headers or {})
        env = app = None
        try:
            parts = parse_subject(self.subject)
        except ValueError:  # not a NatsPubsub subject: only the envelope can say
            topic = envelope.topic or self.subject
        else:
            env, app, topic = parts.env, parts.app, parts.topic
        return EventMetadata(
            subject=self.subject,
            topic=topic,
            app=app,
            env=env,
            claimed_topic=envelope.topic,
            event_id=envelope.event_id,
            occurred_at=envelope.occurred_at,
            received_at=self.received_at,
            stream=stream,
            stream_seq=stream_seq,
            consumer_seq=consumer_seq,
            deliveries=deliveries,
            pending=pending,
            headers=headers,
            metadata=envelope.metadata,
        )
