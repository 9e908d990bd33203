"""Publishing events of one app: one at a time through FastStream, or many pipelined.

``publish`` takes ``broker.publish``'s path: the same command goes through every broker
middleware (telemetry, the envelope), as any publish does. Only the last step, FastStream's
JetStream producer, is the PubAck router of :mod:`faststream_natspubsub.pipeline`, which
sends the same bytes and headers for less; under ``TestNatsBroker`` (or with a producer of
another kind) ``broker.publish`` itself runs. ``publish_many`` writes a window of events at
once through that router; the envelope is built here the same way the envelope middleware
builds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from faststream.exceptions import IncorrectState
from nats.aio.client import Client as NatsClient
from opentelemetry import propagate

from .compat import default_stream_producer, stream_publish_command, through_publish_middlewares
from .envelope import CONTENT_ENCODING_HEADER, encode_within, format_timestamp, new_event_id
from .errors import NatsPubsubError, PermissionDeniedError, PublishError
from .metadata import current_inbound
from .pipeline import PipelinedItem, PubAckRouter, header_block, header_line, header_value
from .publishing import PUBLISH_RETRY_DELAYS, OutgoingEvent, PublishResult
from .tracing import current_trace_metadata

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream.nats import NatsBroker
    from faststream.nats.response import NatsPublishCommand

    from .metadata import InboundEvent
    from .runtime import AppRuntime
    from .violations import PermissionWatch, Violation

__all__ = ("EventPublisher",)

# The per-item header lines of publish_many, encoded once.
_MSG_ID_LINE: Final = b"Nats-Msg-Id: "
_CORRELATION_LINE: Final = b"correlation_id: "
_GZIP_LINE: Final = header_line(CONTENT_ENCODING_HEADER, "gzip")
# ``publish`` without metadata: one shared empty mapping, read only.
_NO_METADATA: Final[Mapping[str, Any]] = MappingProxyType({})


class EventPublisher:
    """``publish`` and ``publish_many`` of one app."""

    def __init__(
        self,
        *,
        broker: NatsBroker,
        runtime: AppRuntime,
        subject_for: Callable[[str], str],
        before_publish: Callable[[], Awaitable[None]],
        permissions: PermissionWatch | None = None,
    ) -> None:
        self.broker = broker
        self.runtime = runtime
        self.subject_for = subject_for
        # Makes sure the app's own stream exists (a consumer-only app declares it lazily).
        self.before_publish = before_publish
        # The connection's permission violations: a refused subject fails its items at once.
        self.permissions = permissions
        self._pub_acks: PubAckRouter | None = None

    async def publish(
        self,
        topic: str,
        message: Any,
        *,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> PublishResult:
        """Publish one event and wait for JetStream to store it (see ``NatsPubsub.publish``)."""
        subject = self.subject_for(topic)
        await self.before_publish()
        event_id = event_id or new_event_id()
        if correlation_id is not None:
            metadata = {**(metadata or {}), "correlation_id": correlation_id}
        elif metadata is None:
            metadata = _NO_METADATA
        event = OutgoingEvent(
            message=message, event_id=event_id, occurred_at=occurred_at, metadata=metadata
        )
        stream = self.runtime.stream
        ack = await self._publish_event(
            event,
            subject,
            headers=dict(headers) if headers else None,
            stream=stream,
            timeout=timeout,
            # Not FastStream's random id: an event that starts a chain is its own correlation
            # (the envelope middleware prefers the caller's and the handled event's).
            correlation_id=metadata.get("correlation_id") or event_id,
        )
        return PublishResult(
            event_id=event_id,
            subject=subject,
            stream=getattr(ack, "stream", stream),
            seq=getattr(ack, "seq", None),
            duplicate=bool(getattr(ack, "duplicate", False)),
        )

    async def _publish_event(
        self,
        event: OutgoingEvent,
        subject: str,
        *,
        headers: dict[str, str] | None,
        stream: str,
        timeout: float,
        correlation_id: str,
    ) -> Any:
        """``broker.publish(event, subject, stream=stream, ...)``, its producer's step done by
        the PubAck router when FastStream's own producer would have done it."""
        broker = self.broker
        try:
            connection = broker.connection
        except IncorrectState:  # not connected: broker.publish says so its own way
            connection = None
        producer = default_stream_producer(broker)
        if not stream or producer is None or not isinstance(connection, NatsClient):
            return await broker.publish(
                event,
                subject,
                headers=headers,
                stream=stream,
                timeout=timeout,
                correlation_id=correlation_id,
            )
        cmd = stream_publish_command(
            event,
            subject=subject,
            headers=headers,
            correlation_id=correlation_id,
            stream=stream,
            timeout=timeout,
        )
        router = self._pub_acks_for(connection)

        async def last_step(cmd: NatsPublishCommand) -> Any:
            body = cmd.body
            if type(body) is not bytes:  # a later middleware left no bytes: FastStream encodes
                return await producer.publish(cmd)
            block = header_block(
                {
                    "content-type": "",  # the producer's, for a body it did not encode
                    **cmd.headers_to_publish(js=True),
                    "Nats-Expected-Stream": cmd.stream or stream,
                }
            )
            return await router.publish(cmd.destination, block + b"\r\n", body, cmd.timeout)

        return await through_publish_middlewares(broker, cmd, last_step)

    async def publish_many(
        self,
        items: Iterable[tuple[str, Any]],
        *,
        metadata: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        timeout: float = 5.0,
    ) -> list[PublishResult]:
        """Publish ``(topic, message)`` pairs pipelined (see ``NatsPubsub.publish_many``)."""
        if correlation_id is not None:
            metadata = {**(metadata or {}), "correlation_id": correlation_id}
        connection = self.broker.connection
        if not isinstance(connection, NatsClient):  # TestNatsBroker: nothing to pipeline
            return await self._publish_one_by_one(items, metadata=metadata, timeout=timeout)
        await self.before_publish()
        inbound = current_inbound(self.broker.context)
        # Computed once per call, not per item: the time, the trace and its header.
        trace_headers: dict[str, str] = {}
        propagate.inject(trace_headers)  # traceparent of the current span, as FastStream does
        now = format_timestamp(datetime.now(timezone.utc))
        shared = _SharedFields(
            now=now,
            max_payload=connection.max_payload,
            # The trace first: keys in ``metadata=`` (and an item's own) win over it.
            metadata={**current_trace_metadata(), **(metadata or {})},
            headers=header_block(
                {
                    **trace_headers,
                    "content-type": self.runtime.envelope.codec.content_type,
                    "Nats-Expected-Stream": self.runtime.stream,
                    "Nats-Published-At": now,
                },
            ),
        )
        prepared: list[PipelinedItem | PublishResult] = []
        for topic, message in items:
            try:
                prepared.append(self._prepare(topic, message, inbound, shared))
            except NatsPubsubError as exc:
                prepared.append(
                    PublishResult(event_id="", subject=topic, stream=None, seq=None, error=exc)
                )
        router = self._pub_acks_for(connection)
        pending = [p for p in prepared if isinstance(p, PipelinedItem)]
        for delay in (*PUBLISH_RETRY_DELAYS, None):
            await self._send_round(router, pending, timeout)
            pending = [p for p in pending if p.retriable and p.error is not None]
            if not pending or delay is None:
                break
            await asyncio.sleep(delay)
        results = [_result(p) if isinstance(p, PipelinedItem) else p for p in prepared]
        metrics = self.runtime.metrics
        if metrics.enabled:
            for result in results:
                if result.ok:
                    metrics.published.add(1, metrics.attributes(result.subject))
        return results

    async def _publish_one_by_one(
        self,
        items: Iterable[tuple[str, Any]],
        *,
        metadata: Mapping[str, Any] | None,
        timeout: float,
    ) -> list[PublishResult]:
        results: list[PublishResult] = []
        for topic, message in items:
            event = message if isinstance(message, OutgoingEvent) else None
            try:
                results.append(
                    await self.publish(
                        topic,
                        event.message if event else message,
                        event_id=event.event_id if event else None,
                        occurred_at=event.occurred_at if event else None,
                        metadata={**(metadata or {}), **(event.metadata if event else {})},
                        timeout=timeout,
                    )
                )
            except NatsPubsubError as exc:
                results.append(
                    PublishResult(event_id="", subject=topic, stream=None, seq=None, error=exc)
                )
        return results

    def _prepare(
        self, topic: str, message: Any, inbound: InboundEvent | None, shared: _SharedFields
    ) -> PipelinedItem:
        subject = self.subject_for(topic)
        if isinstance(message, OutgoingEvent):
            event = OutgoingEvent(
                message=message.message,
                event_id=message.event_id,
                occurred_at=message.occurred_at,
                metadata={**shared.metadata, **message.metadata},
            )
        else:
            event = OutgoingEvent(message=message, metadata=shared.metadata)
        envelope = self.runtime.envelope
        data = envelope.build_envelope(
            subject.split(".", 2)[2], event, inbound, now=shared.now, trace=False
        )
        event_id = data["event_id"]
        headers = b"%s%s%s\r\n%s%s\r\n" % (
            shared.headers,
            _MSG_ID_LINE,
            header_value(event_id),
            _CORRELATION_LINE,
            header_value(str(data["metadata"]["correlation_id"])),
        )
        payload, compressed = envelope.codec.encode(data)
        header_size = len(headers) + len(_GZIP_LINE) + len(b"\r\n")  # at most, once closed
        if len(payload) + header_size > shared.max_payload:  # the server counts both
            payload, compressed = encode_within(
                envelope.codec, data, max_payload=shared.max_payload, headers=header_size
            )
        if compressed:
            headers += _GZIP_LINE
        return PipelinedItem(
            event_id=event_id, subject=subject, payload=payload, headers=headers + b"\r\n"
        )

    async def _send_round(
        self, router: PubAckRouter, pending: list[PipelinedItem], timeout: float
    ) -> None:
        """One window; items whose subject the server refuses end with
        :class:`PermissionDeniedError` (not retried) as soon as it says so."""
        watch = self.permissions
        if watch is None:
            await router.send_round(pending, timeout)
            return
        subjects = {item.subject.lower() for item in pending}
        mark = watch.count

        def refuses(violation: Violation) -> bool:
            return watch.replies_refused(violation) or (
                violation.action == "publish" and violation.subject in subjects
            )

        try:
            names = [item.subject for item in pending]
            with watch.guarding(refuses, name=lambda v: watch.named(v, names)):
                await router.send_round(pending, timeout)
        except PermissionDeniedError as refusal:
            refused = watch.since(mark)
            for item in pending:
                if item.ack is not None:
                    continue
                denial = next((v for v in refused if refuses(v) and _concerns(v, item)), None)
                if denial is not None:
                    item.error = PermissionDeniedError(denial.action, _named(denial, item))
                    item.retriable = False
                elif item.error is None:  # refused before it was sent (no reply can come)
                    item.error = refusal
                    item.retriable = False

    def _pub_acks_for(self, connection: NatsClient) -> PubAckRouter:
        """One PubAck router (one reply subscription) per connection."""
        if self._pub_acks is None or self._pub_acks.connection is not connection:
            self._pub_acks = PubAckRouter(connection)
        return self._pub_acks


@dataclass(frozen=True, slots=True)
class _SharedFields:
    """What every item of one ``publish_many`` call shares."""

    now: str
    max_payload: int
    """The server's limit for headers and body together."""
    metadata: dict[str, Any]
    headers: bytes
    """The header block's shared lines (not closed: each item adds its own)."""


def _concerns(violation: Violation, item: PipelinedItem) -> bool:
    """Whether a refusal stops ``item``: its own subject, or the replies of every item."""
    return violation.action == "subscribe" or violation.subject == item.subject.lower()


def _named(violation: Violation, item: PipelinedItem) -> str:
    return item.subject if violation.action == "publish" else violation.subject


def _result(item: PipelinedItem) -> PublishResult:
    ack, error = item.ack, item.error
    if ack is None and error is None:  # never ok without the server's word
        error = PublishError(f"no PubAck for {item.event_id}")
    return PublishResult(
        event_id=item.event_id,
        subject=item.subject,
        stream=getattr(ack, "stream", None),
        seq=getattr(ack, "seq", None),
        duplicate=bool(getattr(ack, "duplicate", False)),
        error=error,
    )
