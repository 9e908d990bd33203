"""Wraps outgoing messages in the envelope and unwraps incoming ones for the handler.

Only traffic under ``<env>.`` is touched: everything else on the broker stays plain
FastStream, so the middleware can share a broker with ordinary subscribers.

One correlation id: the envelope's ``metadata.correlation_id`` is FastStream's
``correlation_id`` in both directions. On publish it is, in this order, the one the caller
put in the metadata, the one of the event being handled, or the publish's own FastStream
correlation id; the outgoing ``correlation_id`` header says the same. On consume,
``message.correlation_id`` is the envelope's (or, when it names none, the event id).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from faststream import BaseMiddleware
from pydantic_core import from_json

from ..codecs.message import EncodedMessage, message_for
from ..codecs.reader import CodecReader
from ..codecs.targets import HandlerTargets
from ..compat import current_subscriber
from ..envelope import (
    CONTENT_ENCODING_HEADER,
    DEFAULT_MAX_MESSAGE_SIZE,
    EnvelopeCodec,
    check_event_id,
    encode_within,
    format_timestamp,
    message_to_payload,
    new_event_id,
    utc_now_text,
)
from ..errors import ConfigurationError, EnvelopeError
from ..metadata import EVENT_CONTEXT_KEY, InboundEvent, correlation_of, current_inbound
from ..metrics import PubsubMetrics
from ..publishing import RETRIABLE_PUBLISH_ERRORS, OutgoingEvent, retry_publish
from ..subjects import normalize_app, normalize_env
from ..tracing import current_trace_metadata, tracing_configured

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage
    from faststream.nats.response import NatsPublishCommand

    from ..codecs.base import Codec
    from ..violations import PermissionWatch

__all__ = ("NATSPUBSUB_1_0", "EnvelopeMiddleware", "InboundHolder")


class InboundHolder(Protocol):
    """The per-message object that keeps the event for the handler's return value."""

    inbound: InboundEvent | None


# ``compat=`` value: also write what NatsPubsub 1.0's consumer reads.
NATSPUBSUB_1_0: Final = "natspubsub-1.0"

# Metadata an event passes on to the events its handler publishes.
_INHERITED_METADATA: Final = ("trace_id", "user_id", "tenant_id", "session_id")


class EnvelopeMiddleware:
    """Envelope on publish, unwrapping and :class:`EventMetadata` on consume.

    Usable by hand: ``NatsBroker(middlewares=[EnvelopeMiddleware(env="prod", app="orders")])``.
    A message that is not a readable envelope raises
    :class:`~faststream_natspubsub.errors.MalformedEnvelopeError` before the handler runs;
    the failure middleware dead-letters it.
    """

    def __init__(
        self,
        *,
        env: str,
        app: str,
        app_version: str | None = None,
        codec: Codec | None = None,
        metrics: PubsubMetrics | None = None,
        collect_trace: bool | None = None,
        compat: str | None = None,
    ) -> None:
        if compat not in (None, NATSPUBSUB_1_0):
            raise ConfigurationError(f"compat must be None or {NATSPUBSUB_1_0!r}, not {compat!r}")
        # NatsPubsub 1.0's consumer hands its handlers ``envelope.payload`` and reads a
        # top-level ``trace_id``: written too, at the cost of the message twice on the wire.
        self.writes_v1 = compat == NATSPUBSUB_1_0
        self.env = normalize_env(env)
        # Trace ids go into the metadata when something makes spans: FastStream's telemetry
        # middleware or an OpenTelemetry SDK. Otherwise there is no current span to read.
        self.collect_trace = tracing_configured() if collect_trace is None else collect_trace
        self.app = normalize_app(app)
        self.app_version = app_version
        self.codec: Codec = codec or EnvelopeCodec()
        # Received envelopes are read by their content type, whatever this app writes.
        self.reader = CodecReader(self.codec)
        self.targets = HandlerTargets()
        self.metrics = metrics or PubsubMetrics()
        self.subject_prefix = f"{self.env}."
        # The connection's permission violations: a refused publish fails at once (the facade
        # sets it; composed by hand, a refused publish waits out its timeout).
        self.permissions: PermissionWatch | None = None
        # The server counts headers and body against its max_payload, and closes the
        # connection of a client that sends more: the host sets it from the server's INFO.
        self.max_payload = DEFAULT_MAX_MESSAGE_SIZE

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _EnvelopeMiddleware:
        return _EnvelopeMiddleware(msg, context=context, config=self)

    def build_envelope(
        self,
        topic: str,
        event: OutgoingEvent,
        inbound: InboundEvent | None,
        *,
        now: str | None = None,
        trace: bool = True,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        """The envelope dict for ``event``, inheriting correlation from ``inbound``.

        ``now`` is the formatted current time, when the caller has it already; ``trace=False``
        when the caller put the current trace ids into ``event.metadata`` itself;
        ``correlation_id`` is used when neither ``event.metadata`` nor ``inbound`` gives one
        (without it, the event starts its own chain: its event id).
        """
        message = message_to_payload(event.message)
        event_id = new_event_id() if event.event_id is None else check_event_id(event.event_id)
        metadata: dict[str, Any]
        if inbound is None and not trace and not event.metadata:
            # The usual publish outside a handler, built at once (the same keys, same order).
            metadata = {
                "correlation_id": correlation_id or event_id,
                "app_name": self.app,
                "environment": self.env,
            }
            if self.app_version is not None:
                metadata["app_version"] = self.app_version
            return self._envelope(event_id, topic, event, now, message, metadata)
        metadata = {}
        if inbound is not None:
            parent = inbound.envelope.metadata
            for key in _INHERITED_METADATA:
                if (value := parent.get(key)) is not None:
                    metadata[key] = value
            metadata["correlation_id"] = correlation_of(parent, inbound.envelope.event_id)
            metadata["causation_id"] = inbound.envelope.event_id
        elif correlation_id:
            metadata["correlation_id"] = correlation_id
        # The current span (FastStream's publish span, or the handler's) wins over the
        # trace inherited from the incoming envelope.
        if trace:
            metadata.update(current_trace_metadata())
        metadata.update(event.metadata)
        if "correlation_id" in event.metadata:  # the caller's: it becomes a header too
            check_event_id(metadata["correlation_id"], field="correlation_id")
        metadata.setdefault("correlation_id", event_id)
        metadata.setdefault("app_name", self.app)
        metadata.setdefault("environment", self.env)
        if self.app_version is not None:
            metadata.setdefault("app_version", self.app_version)
        return self._envelope(event_id, topic, event, now, message, metadata)

    def _envelope(
        self,
        event_id: str,
        topic: str,
        event: OutgoingEvent,
        now: str | None,
        message: Any,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:
        occurred_at = (
            format_timestamp(event.occurred_at)
            if event.occurred_at is not None
            else now or utc_now_text()
        )
        if self.writes_v1:
            return _with_v1_fields(event_id, topic, occurred_at, message, metadata)
        return {
            "event_id": event_id,
            "schema_version": 1,
            "topic": topic,
            "occurred_at": occurred_at,
            "message": message,
            "metadata": metadata,
        }

    def decode(self, msg: StreamMessage[Any], subject: str) -> InboundEvent:
        """Read the envelope of ``msg`` by its content type; raises ``MalformedEnvelopeError``."""
        content_type = msg.content_type or msg.headers.get("Content-Type")
        codec = self.reader.by_type.get(content_type) or self.reader.codec_for(content_type)
        return InboundEvent(msg, codec.decode(msg.body), subject)

    async def handle(
        self,
        context: ContextRepo,
        msg: StreamMessage[Any],
        inbound: InboundEvent,
        call_next: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        """Run ``call_next`` with the event exposed to the handler.

        The handler's body is the envelope's message; ``EventMetadata`` and
        ``CurrentEnvelope`` read the event from FastStream's context; FastStream's
        ``message.correlation_id`` is the event's.
        """
        envelope = inbound.envelope
        message = envelope.message
        if self.targets.any_protobuf or type(message) is EncodedMessage:
            # A protobuf body, or a handler that takes a protobuf class: what it asks for.
            message = message_for(message, self.targets.target(current_subscriber(context)))
        msg.set_decoder(_MessageDecoder(message))
        msg.correlation_id = correlation_of(envelope.metadata, envelope.event_id)
        token = context.set_local(EVENT_CONTEXT_KEY, inbound)
        metrics = self.metrics
        try:
            if not metrics.enabled:
                return await call_next(msg)
            attributes = metrics.attributes(inbound.subject)
            metrics.consumed.add(1, attributes)
            if envelope.occurred_at is not None:
                latency = (inbound.received_at - envelope.occurred_at).total_seconds()
                metrics.end_to_end_latency.record(max(latency, 0.0), attributes)
            started = time.perf_counter()
            try:
                return await call_next(msg)
            finally:
                metrics.handler_duration.record(time.perf_counter() - started, attributes)
        finally:
            context.reset_local(EVENT_CONTEXT_KEY, token)

    async def consume(
        self,
        context: ContextRepo,
        msg: StreamMessage[Any],
        call_next: Callable[[Any], Awaitable[Any]],
        holder: InboundHolder,
    ) -> Any:
        """Decode the envelope, expose it to the handler, then run ``call_next``."""
        subject = getattr(msg.raw_message, "subject", "")
        if not isinstance(subject, str) or not subject.startswith(self.subject_prefix):
            return await call_next(msg)
        # Kept on the per-message holder too: a handler's return value is published after
        # the context value is reset, but through this same middleware instance.
        inbound = holder.inbound = self.decode(msg, subject)
        return await self.handle(context, msg, inbound, call_next)

    async def publish(
        self,
        call_next: Callable[[Any], Awaitable[Any]],
        cmd: NatsPublishCommand,
        inbound: InboundEvent | None,
    ) -> Any:
        """Wrap ``cmd.body`` in the envelope and publish, retrying with the same id.

        ``inbound`` is the event being handled, if any: its correlation and trace carry over.
        """
        subject = cmd.destination
        event = cmd.body if isinstance(cmd.body, OutgoingEvent) else _as_event(cmd.body)
        parts = subject.split(".", 2)  # <env>.<app>.<topic>
        topic = parts[2] if len(parts) == 3 else subject
        now = utc_now_text()
        data = self.build_envelope(
            topic,
            event,
            inbound,
            now=now,
            trace=self.collect_trace,
            correlation_id=cmd.correlation_id,
        )
        payload, compressed = self.codec.encode(data)
        given = cmd.headers
        headers = cmd.headers = dict(given)  # never mutate a dict the caller owns
        headers["Nats-Msg-Id"] = data["event_id"]
        headers["Nats-Published-At"] = now
        headers["content-type"] = self.codec.content_type
        # FastStream writes this into the correlation_id header: one id on both sides.
        cmd.correlation_id = data["metadata"]["correlation_id"]
        if given or len(payload) + _header_bound(cmd) > self.max_payload:
            # Headers the caller gave, or near the server's limit: counted byte by byte.
            header_size = _sent_header_size(cmd)
            if len(payload) + header_size > self.max_payload:
                payload, compressed = encode_within(
                    self.codec, data, max_payload=self.max_payload, headers=header_size
                )
        if compressed:
            headers[CONTENT_ENCODING_HEADER] = "gzip"
        cmd.body = payload
        if not cmd.stream:
            result = await call_next(cmd)
        else:
            watch = self.permissions
            with watch.guarding_request(subject) if watch else contextlib.nullcontext():
                try:
                    result = await call_next(cmd)
                except RETRIABLE_PUBLISH_ERRORS:  # retried with the same Nats-Msg-Id
                    result = await retry_publish(
                        lambda: call_next(cmd), subject=subject, already_failed=1
                    )
        if self.metrics.enabled:
            self.metrics.published.add(1, self.metrics.attributes(subject))
        return result


# nats-py's header block: "NATS/1.0\r\n", then "key: value\r\n" per header, then "\r\n".
_HEADER_FRAME: Final = len(b"NATS/1.0\r\n\r\n")
_HEADER_LINE_FRAME: Final = len(b": \r\n")
# Headers a host adds after this middleware that are not counted one by one (FastStream's
# schedule headers, a newer release's), and this middleware's gzip marker.
_HEADER_RESERVE: Final = 512
# The headers this middleware and the host always add, beyond the ids: keys, the time, the
# content type, the stream name.
_FIXED_HEADERS: Final = 2_048


def _header_bound(cmd: NatsPublishCommand) -> int:
    """At least the header bytes of ``cmd`` without headers given by the caller (UTF-8
    takes at most 4 bytes a character)."""
    ids = len(cmd.correlation_id or "") + len(cmd.reply_to or "") + len(cmd.headers["Nats-Msg-Id"])
    return _FIXED_HEADERS + _HEADER_RESERVE + 4 * ids


def _sent_header_size(cmd: NatsPublishCommand) -> int:
    """The header bytes ``cmd`` will carry: its headers, then FastStream's and nats-py's."""
    added = {
        "correlation_id": cmd.correlation_id,
        "reply_to": cmd.reply_to,
        "Nats-Expected-Stream": cmd.stream,
    }
    lines = (*cmd.headers.items(), *((k, v) for k, v in added.items() if v))
    return (
        _HEADER_FRAME
        + _HEADER_RESERVE
        + sum(len(str(k).encode()) + len(str(v).encode()) + _HEADER_LINE_FRAME for k, v in lines)
    )


class _EnvelopeMiddleware(BaseMiddleware["NatsPublishCommand", Any]):
    __slots__ = ("_config", "inbound")

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: EnvelopeMiddleware) -> None:
        super().__init__(msg, context=context)
        self._config = config
        self.inbound: InboundEvent | None = None

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        return await self._config.consume(self.context, msg, call_next, self)

    async def publish_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], cmd: NatsPublishCommand
    ) -> Any:
        config = self._config
        if not cmd.destination.startswith(config.subject_prefix):
            return await call_next(cmd)
        inbound = current_inbound(self.context) or self.inbound
        return await config.publish(call_next, cmd, inbound)


class _MessageDecoder:
    """Stands in for FastStream's decoder: the body is the envelope's ``message``."""

    __slots__ = ("_message",)

    def __init__(self, message: Any) -> None:
        self._message = message

    async def __call__(self, _msg: StreamMessage[Any]) -> Any:
        return self._message


def _with_v1_fields(
    event_id: str, topic: str, occurred_at: str, message: Any, metadata: dict[str, Any]
) -> dict[str, Any]:
    """The envelope plus what NatsPubsub 1.0's consumer reads, in 1.0's field order."""
    data: dict[str, Any] = {
        "event_id": event_id,
        "schema_version": 1,
        "topic": topic,
        "producer": metadata["app_name"],
        "occurred_at": occurred_at,
    }
    trace_id = metadata.get("trace_id")
    if isinstance(trace_id, str):
        data["trace_id"] = trace_id
    data["message"] = message
    data["payload"] = message
    data["metadata"] = metadata
    return data


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
