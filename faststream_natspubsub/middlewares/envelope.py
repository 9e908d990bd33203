"""Wraps outgoing messages in the envelope and unwraps incoming ones for the handler.

Only traffic under ``<env>.`` is touched: everything else on the broker stays plain
FastStream, so the middleware can share a broker with ordinary subscribers.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from faststream import BaseMiddleware
from pydantic_core import from_json

from ..envelope import (
    CONTENT_ENCODING_HEADER,
    EnvelopeCodec,
    format_timestamp,
    message_to_payload,
    new_event_id,
)
from ..errors import EnvelopeError
from ..metadata import INBOUND_CONTEXT_KEY, InboundEvent
from ..metrics import PubsubMetrics
from ..publishing import OutgoingEvent, retry_publish
from ..subjects import normalize_app, normalize_env
from ..tracing import current_trace_metadata

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage
    from faststream.nats.response import NatsPublishCommand

__all__ = ("EnvelopeMiddleware",)

# Metadata an event passes on to the events its handler publishes.
_INHERITED_METADATA = ("correlation_id", "trace_id", "user_id", "tenant_id", "session_id")


class EnvelopeMiddleware:
    """Envelope on publish, unwrapping and :class:`EventMetadata` on consume.

    Usable by hand: ``NatsBroker(middlewares=[EnvelopeMiddleware(env="prod", app="orders")])``.
    A message that is not a readable envelope raises
    :class:`~faststream_natspubsub.envelope.MalformedEnvelopeError` before the handler runs;
    the retry middleware dead-letters it.
    """

    def __init__(
        self,
        *,
        env: str,
        app: str,
        app_version: str | None = None,
        codec: EnvelopeCodec | None = None,
        metrics: PubsubMetrics | None = None,
    ) -> None:
        self.env = normalize_env(env)
        self.app = normalize_app(app)
        self.app_version = app_version
        self.codec = codec or EnvelopeCodec()
        self.metrics = metrics or PubsubMetrics()
        self.subject_prefix = f"{self.env}."

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _EnvelopeMiddleware:
        return _EnvelopeMiddleware(msg, context=context, config=self)

    def build_envelope(
        self, topic: str, event: OutgoingEvent, inbound: InboundEvent | None
    ) -> dict[str, Any]:
        """The envelope dict for ``event``, inheriting correlation from ``inbound``."""
        message = message_to_payload(event.message)
        metadata: dict[str, Any] = {}
        if inbound is not None:
            parent = inbound.envelope.metadata
            for key in _INHERITED_METADATA:
                if (value := parent.get(key)) is not None:
                    metadata[key] = value
            metadata["causation_id"] = inbound.envelope.event_id
        # The current span (FastStream's publish span, or the handler's) wins over the
        # trace inherited from the incoming envelope.
        metadata.update(current_trace_metadata())
        metadata.update(event.metadata)
        metadata.setdefault("app_name", self.app)
        metadata.setdefault("environment", self.env)
        if self.app_version is not None:
            metadata.setdefault("app_version", self.app_version)
        return {
            "event_id": event.event_id or new_event_id(),
            "schema_version": 1,
            "topic": topic,
            "occurred_at": format_timestamp(event.occurred_at or datetime.now(timezone.utc)),
            "message": message,
            "metadata": metadata,
        }


class _EnvelopeMiddleware(BaseMiddleware["NatsPublishCommand", Any]):
    __slots__ = ("_config", "_inbound")

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: EnvelopeMiddleware) -> None:
        super().__init__(msg, context=context)
        self._config = config
        # Kept on the instance: a handler's return value is published after the context
        # scope below has closed, but through this same middleware instance.
        self._inbound: InboundEvent | None = None

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        subject: str = getattr(msg.raw_message, "subject", "")
        if not subject.startswith(self._config.subject_prefix):
            return await call_next(msg)
        envelope = self._config.codec.decode(msg.body)
        inbound = self._inbound = InboundEvent(msg, envelope, subject)
        metrics = self._config.metrics
        attributes = metrics.attributes(subject)
        metrics.consumed.add(1, attributes)
        if envelope.occurred_at is not None:
            latency = (inbound.received_at - envelope.occurred_at).total_seconds()
            metrics.end_to_end_latency.record(max(latency, 0.0), attributes)
        # The handler gets the envelope's message, already decoded, not the raw JSON.
        msg.set_decoder(_MessageDecoder(envelope.message))
        started = time.perf_counter()
        try:
            with self.context.scope(INBOUND_CONTEXT_KEY, inbound):
                return await call_next(msg)
        finally:
            metrics.handler_duration.record(time.perf_counter() - started, attributes)

    async def publish_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], cmd: NatsPublishCommand
    ) -> Any:
        config = self._config
        subject = cmd.destination
        if not subject.startswith(config.subject_prefix):
            return await call_next(cmd)
        event = cmd.body if isinstance(cmd.body, OutgoingEvent) else _as_event(cmd.body)
        inbound = self.context.get_local(INBOUND_CONTEXT_KEY) or self._inbound
        topic = subject.split(".", 2)[2] if subject.count(".") >= 2 else subject
        data = config.build_envelope(topic, event, inbound)
        payload, compressed = config.codec.encode(data)
        headers = cmd.headers = dict(cmd.headers)  # never mutate a dict the caller owns
        headers["Nats-Msg-Id"] = data["event_id"]
        headers["Nats-Published-At"] = format_timestamp(datetime.now(timezone.utc))
        headers["content-type"] = "application/json"
        if compressed:
            headers[CONTENT_ENCODING_HEADER] = "gzip"
        cmd.body = payload
        if not cmd.stream:
            result = await call_next(cmd)
        else:
            result = await retry_publish(lambda: call_next(cmd), subject=subject)
        config.metrics.published.add(1, config.metrics.attributes(subject))
        return result


class _MessageDecoder:
    """Stands in for FastStream's decoder: the body is the envelope's ``message``."""

    __slots__ = ("_message",)

    def __init__(self, message: Any) -> None:
        self._message = message

    async def __call__(self, _msg: StreamMessage[Any]) -> Any:
        return self._message


def _as_event(body: Any) -> OutgoingEvent:
    """A plain publish body: bytes and str must hold a JSON object."""
    if isinstance(body, bytes | bytearray | str):
        try:
            body = from_json(body)
        except ValueError as exc:
            raise EnvelopeError(f"message bytes are not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise EnvelopeError(f"message must be a JSON object, got {type(body).__name__}")
    return OutgoingEvent(message=body)
