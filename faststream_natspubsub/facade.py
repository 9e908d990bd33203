"""``NatsPubsub``: the thin facade that installs the middlewares and speaks in topics."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from faststream import AckPolicy
from faststream.asgi import AsgiResponse, get
from faststream.asgi.types import Scope  # noqa: TC002 - FastDepends resolves it at runtime
from faststream.exceptions import IncorrectState
from faststream.nats import JStream, NatsRouter, PullSub
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy as ServerAckPolicy
from nats.js.api import ConsumerConfig
from opentelemetry import propagate
from pydantic_core import to_json

from . import asyncapi
from .advisories import MaxDeliveriesWatcher
from .dispatch import Dispatcher, DispatchSettings, dispatch_settings
from .dlq import DeadLetterWriter
from .envelope import CONTENT_ENCODING_HEADER, EnvelopeCodec, format_timestamp, new_event_id
from .errors import NatsPubsubError, SubjectError
from .health import DEFAULT_MAX_PENDING, HealthReport, HealthStatus, check_health
from .inbox import DEFAULT_INBOX_TTL, InboxStore, KvInboxStore, MemoryInboxStore, inbox_bucket_name
from .inbox_ahead import InboxAhead, drain_on_stop
from .metadata import current_inbound
from .metrics import PubsubMetrics
from .middlewares.batch import BatchMiddleware
from .middlewares.envelope import EnvelopeMiddleware
from .middlewares.failure import FailureMiddleware
from .middlewares.heartbeat import AckHeartbeatMiddleware
from .middlewares.inbox import InboxMiddleware
from .middlewares.pubsub import PubsubMiddleware
from .pipeline import PipelinedItem, PubAckRouter, header_block, header_line, header_value
from .publishing import (
    PUBLISH_RETRY_DELAYS,
    OutgoingEvent,
    PublishResult,
)
from .pull import BatchFetcher
from .retry import RetryPolicy
from .subjects import (
    build_subject,
    consumer_name,
    dlq_stream_name,
    dlq_subject_prefix,
    normalize_app,
    normalize_env,
    stream_name,
)
from .topology import ConsumerSpec, StreamSettings, StreamSpec, Topology
from .tracing import TraceContextMiddleware, current_trace_metadata, tracing_configured

if TYPE_CHECKING:
    from faststream.asgi.handlers import GetHandler
    from faststream.nats import NatsBroker
    from faststream.nats.publisher.usecase import LogicPublisher
    from faststream.nats.subscriber.usecases.basic import LogicSubscriber
    from nats.js import JetStreamContext
    from opentelemetry.metrics import MeterProvider

    from .batch import BatchSettings
    from .ordering import OrderBy

__all__ = ("DLQ_MAX_AGE", "NatsPubsub", "PubsubRouter")

logger = logging.getLogger("faststream_natspubsub")

# How long dead letters are kept unless configured otherwise.
DLQ_MAX_AGE: Final = 30 * 24 * 3600.0
# Topics whose checked subject is remembered (per facade; topics are few in practice).
_SUBJECT_CACHE_LIMIT: Final = 10_000
# FastStream needs a PullSub to make a pull subscriber; the facade's own dispatch does the
# fetching (see dispatch.py), so these values are not used.
_UNUSED_PULL_SUB: Final = PullSub(batch_size=1, timeout=5.0)
# The per-item header lines of publish_many, encoded once.
_MSG_ID_LINE: Final = b"Nats-Msg-Id: "
_GZIP_LINE: Final = header_line(CONTENT_ENCODING_HEADER, "gzip")


class NatsPubsub:
    """NatsPubsub conventions on a FastStream ``NatsBroker``.

    Installs the failure (retry/DLQ) and envelope middlewares on ``broker`` and declares the
    streams and consumers it needs when the broker starts::

        broker = NatsBroker("nats://127.0.0.1:4222")
        pubsub = NatsPubsub(broker, env="production", app="orders")

        @pubsub.subscriber("order.created")
        async def on_created(order: Order, meta: EventMetadata) -> None: ...
    """

    def __init__(
        self,
        broker: NatsBroker,
        *,
        env: str,
        app: str,
        retry: RetryPolicy | None = None,
        dlq: bool = True,
        inbox: InboxStore | str | None = None,
        inbox_ttl: float = DEFAULT_INBOX_TTL,
        app_version: str | None = None,
        streams: StreamSettings | None = None,
        dlq_max_age: float = DLQ_MAX_AGE,
        codec: EnvelopeCodec | None = None,
        meter_provider: MeterProvider | None = None,
        tracing: bool | None = None,
    ) -> None:
        self.broker = broker
        self.env = normalize_env(env)
        self.app = normalize_app(app)
        self.retry = retry or RetryPolicy()
        self.stream_settings = streams or StreamSettings()
        self.stream = stream_name(self.env, self.app)
        self.dlq_stream = dlq_stream_name(self.env, self.app) if dlq else None
        self.dlq_subject_prefix = dlq_subject_prefix(self.env, self.app)

        self.topology = Topology()
        self._declare_stream(self.app)
        if self.dlq_stream is not None:
            dlq_settings = StreamSettings(
                replicas=self.stream_settings.replicas,
                storage=self.stream_settings.storage,
                max_age=dlq_max_age,
            )
            self.topology.add_stream(
                StreamSpec(
                    name=self.dlq_stream,
                    subjects=(f"{self.dlq_subject_prefix}.>",),
                    settings=dlq_settings,
                )
            )

        self.codec = codec or EnvelopeCodec()
        self.metrics = PubsubMetrics(meter_provider)
        if tracing is None:
            tracing = _has_telemetry_middleware(broker)
        self.envelope = EnvelopeMiddleware(
            env=self.env,
            app=self.app,
            app_version=app_version,
            codec=self.codec,
            metrics=self.metrics,
            collect_trace=tracing or tracing_configured(),
        )
        self.dead_letters = (
            DeadLetterWriter(
                app=self.app,
                stream=self.dlq_stream,
                subject_prefix=self.dlq_subject_prefix,
                codec=self.codec,
            )
            if self.dlq_stream is not None
            else None
        )
        self.failure = FailureMiddleware(
            env=self.env, retry=self.retry, dlq=self.dead_letters, metrics=self.metrics
        )
        self.heartbeat = AckHeartbeatMiddleware(
            on_beat=lambda: self.metrics.heartbeats.add(1, {"messaging.system": "nats"})
        )
        self.inbox_store = self._make_inbox_store(inbox, inbox_ttl)
        self.inbox = (
            InboxMiddleware(
                self.inbox_store,
                metrics=self.metrics,
                # A KV mark is a round trip: the ack follows it without holding the handler.
                defer_ack=isinstance(self.inbox_store, KvInboxStore),
            )
            if self.inbox_store is not None
            else None
        )
        if tracing:
            # First of all: its on_receive must fill traceparent before telemetry reads it.
            broker.insert_middleware(TraceContextMiddleware(subject_prefix=f"{self.env}."))
        self.batch = BatchMiddleware(
            failure=self.failure,
            envelope=self.envelope,
            heartbeat=self.heartbeat,
            inbox=self.inbox,
        )
        # One layer for all of it (each FastStream layer costs per message). Inside it the
        # order is: failure (sees decode errors too), heartbeat, envelope, inbox.
        broker.add_middleware(
            PubsubMiddleware(
                failure=self.failure,
                heartbeat=self.heartbeat,
                envelope=self.envelope,
                inbox=self.inbox,
                batch=self.batch,
            )
        )
        self._watcher: MaxDeliveriesWatcher | None = None
        # Subscribers whose pull subscription gets the leaner fetch once started.
        self._pull_subscribers: weakref.WeakSet[Any] = weakref.WeakSet()
        asyncapi.register(self)
        self._subjects: dict[str, str] = {}
        self._js: tuple[NatsClient, JetStreamContext] | None = None
        self._pub_acks: PubAckRouter | None = None
        self._install_start_hook()

    # -- declaring -----------------------------------------------------------------------

    def subscriber(
        self,
        topic: str,
        *,
        app: str | None = None,
        ack_wait: float = 30.0,
        max_workers: int = 1,
        inbox: bool = True,
        batch: BatchSettings | None = None,
        order_by: OrderBy | None = None,
        **faststream_kwargs: Any,
    ) -> LogicSubscriber[Any]:
        """A durable pull subscriber for ``topic`` of this app, or of ``app`` if given.

        ``ack_wait`` is in seconds; ``inbox=False`` opts this subscriber out of the inbox;
        ``batch`` calls the handler once per fetched batch (``list[Item]``), each item
        keeping its own retry, DLQ and inbox outcome. ``max_workers`` handlers run at once;
        ``order_by`` (a field name, or a callable on the event's message) keeps the events
        of one key in order while other keys run in parallel. Other keyword arguments go to
        ``broker.subscriber``.
        """
        subject, kwargs, dispatch = self._subscriber_kwargs(
            topic,
            app=app,
            ack_wait=ack_wait,
            max_workers=max_workers,
            batch=batch,
            order_by=order_by,
            inbox=inbox,
            extra=faststream_kwargs,
        )
        return self._registered(
            self.broker.subscriber(subject, **kwargs), inbox=inbox, dispatch=dispatch
        )

    def publisher(self, topic: str, **faststream_kwargs: Any) -> LogicPublisher:
        """A FastStream publisher for ``topic``; what it sends is wrapped in the envelope."""
        subject, kwargs = self._publisher_kwargs(topic, faststream_kwargs)
        return self.broker.publisher(subject, **kwargs)

    def router(self, **kwargs: Any) -> PubsubRouter:
        """A ``NatsRouter`` whose ``subscriber``/``publisher`` take topics like the facade's."""
        return PubsubRouter(self, **kwargs)

    def _registered(
        self, subscriber: Any, *, inbox: bool, dispatch: DispatchSettings | None = None
    ) -> LogicSubscriber[Any]:
        if not inbox and self.inbox is not None:
            self.inbox.exclude(subscriber)
        if dispatch is not None:
            Dispatcher.install(subscriber, dispatch)
        else:
            self._pull_subscribers.add(subscriber)
            if inbox and self.inbox is not None and self.inbox.defer_ack:
                drain_on_stop(subscriber, self.inbox)
        return subscriber  # type: ignore[no-any-return]

    def _make_inbox_store(self, inbox: InboxStore | str | None, ttl: float) -> InboxStore | None:
        if inbox is None or isinstance(inbox, InboxStore):
            return inbox
        if inbox == "memory":
            return MemoryInboxStore(ttl=ttl)
        if inbox == "kv":
            return KvInboxStore(
                bucket=inbox_bucket_name(self.env, self.app),
                ttl=ttl,
                replicas=self.stream_settings.replicas,
            )
        raise ValueError(f"inbox must be 'memory', 'kv', an InboxStore or None, not {inbox!r}")

    def _declare_stream(self, app: str) -> str:
        name = stream_name(self.env, app)
        subjects = (f"{self.env}.{app}.>",)
        self.topology.add_stream(
            StreamSpec(name=name, subjects=subjects, settings=self.stream_settings)
        )
        return name

    def _subscriber_kwargs(
        self,
        topic: str,
        *,
        app: str | None,
        ack_wait: float,
        max_workers: int,
        batch: BatchSettings | None,
        extra: dict[str, Any],
        order_by: OrderBy | None = None,
        inbox: bool = True,
    ) -> tuple[str, dict[str, Any], DispatchSettings | None]:
        if batch is not None and max_workers != 1:
            raise ValueError("batch subscribers handle one batch at a time: max_workers=1")
        # Without a pull_sub of the caller's, the facade's dispatch fetches and dispatches.
        own_dispatch = batch is None and "pull_sub" not in extra
        if order_by is not None and not own_dispatch:
            raise ValueError("order_by needs the facade's own fetching: pass no pull_sub or batch")
        source_app = normalize_app(app) if app is not None else self.app
        subject = build_subject(self.env, source_app, topic)
        stream = self._declare_stream(source_app)
        durable = extra.pop("durable", None) or consumer_name(self.app, subject)
        spec = ConsumerSpec(
            stream=stream,
            durable=durable,
            filter_subject=subject,
            ack_wait=ack_wait,
            max_deliver=self.retry.max_deliver,
        )
        self.topology.add_consumer(spec)
        kwargs: dict[str, Any] = {
            "stream": JStream(stream, declare=False),
            "durable": durable,
            "config": ConsumerConfig(
                ack_policy=ServerAckPolicy.EXPLICIT,
                ack_wait=ack_wait,
                max_deliver=spec.max_deliver,
            ),
            "pull_sub": (
                PullSub(batch_size=batch.max_messages, timeout=batch.max_wait, batch=True)
                if batch is not None
                else _UNUSED_PULL_SUB
            ),
            # With the facade's dispatch FastStream runs one loop; the dispatch has the workers.
            "max_workers": 1 if own_dispatch else max_workers,
            # A safety net only: the failure middleware decides ack, NAK or DLQ itself.
            "ack_policy": AckPolicy.NACK_ON_ERROR,
        }
        kwargs.update(extra)
        hooks = (
            InboxAhead(self.inbox, codec=self.codec, durable=durable, ack_wait=ack_wait)
            if inbox and self.inbox is not None
            else None
        )
        dispatch = (
            dispatch_settings(
                max_workers=max_workers,
                ack_wait=ack_wait,
                order_by=order_by,
                retry=self.retry,
                codec=self.codec,
                hooks=hooks,
            )
            if own_dispatch
            else None
        )
        return subject, kwargs, dispatch

    def _publisher_kwargs(self, topic: str, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        subject = self.subject_for(topic)
        kwargs: dict[str, Any] = {"stream": JStream(self.stream, declare=False)}
        kwargs.update(extra)
        return subject, kwargs

    # -- publishing ----------------------------------------------------------------------

    def subject_for(self, topic: str) -> str:
        """The subject this app publishes ``topic`` on; wildcards are refused."""
        subject = self._subjects.get(topic)
        if subject is None:
            subject = build_subject(self.env, self.app, topic)
            if "*" in subject or ">" in subject:
                raise SubjectError(f"cannot publish to wildcard topic {topic!r}")
            if len(self._subjects) < _SUBJECT_CACHE_LIMIT:
                self._subjects[topic] = subject
        return subject

    async def publish(
        self,
        topic: str,
        message: Any,
        *,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> PublishResult:
        """Publish one event and wait for JetStream to store it.

        Raises :class:`SubjectError`, :class:`EnvelopeError` or :class:`MessageTooLargeError`
        before anything is sent, and :class:`PublishError` when the server did not confirm
        the event after bounded retries (with the same ``Nats-Msg-Id``). ``timeout`` is per
        attempt, in seconds.
        """
        subject = self.subject_for(topic)
        event = OutgoingEvent(
            message=message,
            event_id=event_id or new_event_id(),
            occurred_at=occurred_at,
            metadata=metadata or {},
        )
        ack = await self.broker.publish(
            event, subject, headers=dict(headers or {}), stream=self.stream, timeout=timeout
        )
        assert event.event_id is not None
        return PublishResult(
            event_id=event.event_id,
            subject=subject,
            stream=getattr(ack, "stream", self.stream),
            seq=getattr(ack, "seq", None),
            duplicate=bool(getattr(ack, "duplicate", False)),
        )

    async def publish_many(
        self,
        items: Iterable[tuple[str, Any]],
        *,
        metadata: Mapping[str, Any] | None = None,
        timeout: float = 5.0,
    ) -> list[PublishResult]:
        """Publish many ``(topic, message)`` pairs pipelined, without awaiting each one.

        Returns one result per item, in order; a failed item has ``error`` set and never
        hides the others. Each item gets its own event id (pass an :class:`OutgoingEvent`
        as the message to choose it). Timed-out items are retried with the same id.
        """
        connection = self.broker.connection
        if not isinstance(connection, NatsClient):  # TestNatsBroker: nothing to pipeline
            return await self._publish_one_by_one(items, metadata=metadata, timeout=timeout)
        inbound = current_inbound(self.broker.context)
        # Computed once per call, not per item: the time, the trace and its header.
        trace_headers: dict[str, str] = {}
        propagate.inject(trace_headers)  # traceparent of the current span, as FastStream does
        now = format_timestamp(datetime.now(timezone.utc))
        shared = _SharedFields(
            now=now,
            # The trace first: keys in ``metadata=`` (and an item's own) win over it.
            metadata={**current_trace_metadata(), **(metadata or {})},
            headers=header_block(
                {
                    **trace_headers,
                    "content-type": "application/json",
                    "Nats-Expected-Stream": self.stream,
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
            await router.send_round(pending, timeout)
            pending = [p for p in pending if p.retriable and p.error is not None]
            if not pending or delay is None:
                break
            await asyncio.sleep(delay)
        results = [_result(p) if isinstance(p, PipelinedItem) else p for p in prepared]
        for result in results:
            if result.ok:
                self.metrics.published.add(1, self.metrics.attributes(result.subject))
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
        self, topic: str, message: Any, inbound: Any, shared: _SharedFields
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
        data = self.envelope.build_envelope(
            subject.split(".", 2)[2], event, inbound, now=shared.now, trace=False
        )
        payload, compressed = self.envelope.codec.encode(data)
        event_id = data["event_id"]
        headers = shared.headers + _MSG_ID_LINE + header_value(event_id) + b"\r\n"
        if compressed:
            headers += _GZIP_LINE
        return PipelinedItem(
            event_id=event_id, subject=subject, payload=payload, headers=headers + b"\r\n"
        )

    # -- health ----------------------------------------------------------------------------

    async def health(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> HealthReport:
        """Connection, JetStream, this app's streams and consumers: healthy/degraded/unhealthy."""
        try:
            connection: NatsClient | None = self.broker.connection
        except IncorrectState:  # not connected (yet, or any more)
            connection = None
        return await check_health(
            connection,
            streams=list(self.topology.streams),
            consumers=list(self.topology.consumers),
            max_pending=max_pending,
        )

    def health_route(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> GetHandler:
        """An ASGI route for FastStream's ``AsgiFastStream``: 200, or 503 when unhealthy.

        ``AsgiFastStream(broker, asgi_routes=[("/health", pubsub.health_route())])``
        """

        @get(description="NatsPubsub health: connection, JetStream, streams, consumer lag")
        async def health(scope: Scope) -> AsgiResponse:
            report = await self.health(max_pending=max_pending)
            status = 503 if report.status is HealthStatus.UNHEALTHY else 200
            return AsgiResponse(
                to_json(report.to_dict()),
                status_code=status,
                headers={"content-type": "application/json"},
            )

        return health

    # -- lifecycle -----------------------------------------------------------------------

    async def declare_topology(self) -> None:
        """Create or update the streams and consumers; runs when the broker starts."""
        await self.topology.declare(self._jetstream())

    def _jetstream(self) -> JetStreamContext:
        return self._jetstream_for(self.broker.connection)

    def _jetstream_for(self, connection: NatsClient) -> JetStreamContext:
        """One JetStream context per connection: each new one subscribes a reply inbox."""
        if self._js is None or self._js[0] is not connection:
            self._js = (connection, connection.jetstream())
        return self._js[1]

    def _pub_acks_for(self, connection: NatsClient) -> PubAckRouter:
        """One PubAck router (one reply subscription) per connection."""
        if self._pub_acks is None or self._pub_acks.connection is not connection:
            self._pub_acks = PubAckRouter(connection)
        return self._pub_acks

    def _install_start_hook(self) -> None:
        """Declare topology between the broker's connect and its subscribers' start.

        FastStream has no hook there; the bound ``start`` and ``stop`` are wrapped on this
        broker instance (``TestNatsBroker`` patches ``start`` the same way and restores it).
        """
        original_start, original_stop = self.broker.start, self.broker.stop

        async def start() -> None:
            connection = await self.broker.connect()
            try:
                await self.declare_topology()
                if isinstance(self.inbox_store, KvInboxStore):
                    await self.inbox_store.bind(connection.jetstream())
                if self.dead_letters is not None and self.topology.consumers:
                    # Before the consumers pull: the server sends the advisory on a later pull.
                    self._watcher = MaxDeliveriesWatcher(
                        writer=self.dead_letters,
                        publish=self.broker.publish,
                        consumers=self.topology.consumers,
                        metrics=self.metrics,
                    )
                    await self._watcher.start(connection)
            except BaseException:
                await original_stop()  # do not leave a connection behind
                raise
            await original_start()
            for subscriber in self._pull_subscribers:
                BatchFetcher.install(getattr(subscriber, "subscription", None))

        async def stop(*args: Any, **kwargs: Any) -> None:
            if self._watcher is not None:
                await self._watcher.stop()
                self._watcher = None
            await original_stop(*args, **kwargs)

        self.broker.start = start  # type: ignore[method-assign]
        self.broker.stop = stop  # type: ignore[method-assign]


class PubsubRouter(NatsRouter):
    """A ``NatsRouter`` for NatsPubsub topics; include it with ``broker.include_router``."""

    def __init__(self, pubsub: NatsPubsub, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pubsub = pubsub

    def subscriber(  # type: ignore[override]
        self,
        topic: str,
        *,
        app: str | None = None,
        ack_wait: float = 30.0,
        max_workers: int = 1,
        inbox: bool = True,
        batch: BatchSettings | None = None,
        order_by: OrderBy | None = None,
        **faststream_kwargs: Any,
    ) -> LogicSubscriber[Any]:
        """Like :meth:`NatsPubsub.subscriber`, registered on this router."""
        subject, kwargs, dispatch = self._pubsub._subscriber_kwargs(
            topic,
            app=app,
            ack_wait=ack_wait,
            max_workers=max_workers,
            batch=batch,
            order_by=order_by,
            inbox=inbox,
            extra=faststream_kwargs,
        )
        return self._pubsub._registered(
            super().subscriber(subject, **kwargs), inbox=inbox, dispatch=dispatch
        )

    def publisher(self, topic: str, **faststream_kwargs: Any) -> LogicPublisher:  # type: ignore[override]
        """Like :meth:`NatsPubsub.publisher`, registered on this router."""
        subject, kwargs = self._pubsub._publisher_kwargs(topic, faststream_kwargs)
        return super().publisher(subject, **kwargs)


@dataclass(frozen=True, slots=True)
class _SharedFields:
    """What every item of one ``publish_many`` call shares."""

    now: str
    metadata: dict[str, Any]
    headers: bytes
    """The header block's shared lines (not closed: each item adds its own)."""


def _has_telemetry_middleware(broker: NatsBroker) -> bool:
    """Whether FastStream's telemetry middleware is on ``broker``.

    ``faststream.opentelemetry`` needs ``opentelemetry-semantic-conventions``, which comes with
    the OpenTelemetry SDK, not with the API this package depends on: without it, the
    middleware cannot be on the broker, and the module is not imported at all.
    """
    try:
        from faststream.opentelemetry.middleware import TelemetryMiddleware
    except ImportError:
        return False
    return any(isinstance(m, TelemetryMiddleware) for m in broker.middlewares)


def _result(item: PipelinedItem) -> PublishResult:
    ack = item.ack
    return PublishResult(
        event_id=item.event_id,
        subject=item.subject,
        stream=getattr(ack, "stream", None),
        seq=getattr(ack, "seq", None),
        duplicate=bool(getattr(ack, "duplicate", False)),
        error=item.error,
    )
