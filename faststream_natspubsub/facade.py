"""``NatsPubsub``: the facade that wires one app's concerns onto a FastStream broker.

Each job lives in its own module; this one only builds and connects them:
declaring (:mod:`.declaring`), registering subscribers (:mod:`.registrar`), publishing
(:mod:`.publisher`), start and stop (:mod:`.lifecycle`, through the broker's
:mod:`.host`), health (:mod:`.health`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Final

from faststream.exceptions import IncorrectState

from .breaker import DEFAULT_CIRCUIT_BREAKER, BreakerState, CircuitBreaker
from .declaring import Declarations
from .dlq import DLQ_MAX_BYTES, DLQ_MAX_MSGS, DeadLetterWriter, dlq_stream_settings
from .envelope import EnvelopeCodec
from .errors import ConfigurationError
from .health import (
    DEFAULT_MAX_PENDING,
    ComponentHealth,
    HealthReport,
    HealthStatus,
    check_health,
    health_route,
)
from .host import BrokerHost
from .inbox import DEFAULT_INBOX_TTL, InboxStore, KvInboxStore, MemoryInboxStore, inbox_bucket_name
from .inbox_prefix import bind_inbox_prefix, check_inbox_prefix
from .lifecycle import PubsubLifecycle
from .metrics import PubsubMetrics
from .middlewares.batch import BatchMiddleware
from .middlewares.envelope import EnvelopeMiddleware
from .middlewares.failure import FailureMiddleware
from .middlewares.heartbeat import AckHeartbeatMiddleware
from .middlewares.inbox import InboxMiddleware
from .permissions import AppAccess, ConsumerAccess, PermissionSet, permissions_for
from .publisher import EventPublisher
from .registrar import TopicRegistrar
from .retry import RetryPolicy
from .router import PubsubRouter
from .runtime import AppRuntime
from .subjects import dlq_stream_name, dlq_subject_prefix, normalize_app, normalize_env
from .topology import StreamSettings, StreamSpec, Topology
from .tracing import tracing_configured
from .transactional import TransactionalInboxStore

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from datetime import datetime

    from faststream.asgi.handlers import GetHandler
    from faststream.nats import NatsBroker
    from faststream.nats.publisher.usecase import LogicPublisher
    from faststream.nats.subscriber.usecases.basic import LogicSubscriber
    from nats.aio.client import Client as NatsClient
    from opentelemetry.metrics import MeterProvider
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .advisories import MaxDeliveriesWatcher
    from .batch import BatchSettings
    from .codecs.base import Codec
    from .console import OperationsConsole
    from .ordering import OrderBy
    from .publishing import PublishResult
    from .sql import Outbox, OutboxOptions
    from .subjects import ForeignApp

__all__ = ("DLQ_MAX_AGE", "NatsPubsub")

# How long dead letters are kept unless configured otherwise.
DLQ_MAX_AGE: Final = 30 * 24 * 3600.0


class NatsPubsub:
    """NatsPubsub conventions for one app on a FastStream ``NatsBroker``.

    Installs the middleware on ``broker`` (once, however many apps share the broker) and
    declares the streams and consumers the app needs when the broker starts::

        broker = NatsBroker("nats://127.0.0.1:4222")
        pubsub = NatsPubsub(broker, env="production", app="orders")

        @pubsub.subscriber("order.created")
        async def on_created(order: Order, meta: EventMetadata) -> None: ...

    Several apps may share one broker (a modular monolith, an in-memory test of several
    services): each event is wrapped once, by the app whose topic it is, and each app's
    subscribers keep their own retry policy, DLQ and inbox.
    """

    def __init__(
        self,
        broker: NatsBroker,
        *,
        env: str,
        app: str,
        retry: RetryPolicy | None = None,
        dlq: bool = True,
        inbox: InboxStore | TransactionalInboxStore | str | None = None,
        inbox_ttl: float = DEFAULT_INBOX_TTL,
        app_version: str | None = None,
        streams: StreamSettings | None = None,
        dlq_max_age: float = DLQ_MAX_AGE,
        dlq_max_bytes: int | None = DLQ_MAX_BYTES,
        dlq_max_msgs: int | None = DLQ_MAX_MSGS,
        codec: Codec | None = None,
        meter_provider: MeterProvider | None = None,
        tracing: bool | None = None,
        compat: str | None = None,
        topology: str = "create",
        outbox: AsyncEngine | OutboxOptions | None = None,
        inbox_prefix: str | None = None,
        circuit_breaker: CircuitBreaker | None = DEFAULT_CIRCUIT_BREAKER,
    ) -> None:
        """``compat="natspubsub-1.0"`` also writes what NatsPubsub 1.0 consumers read (the
        message again as ``payload``, ``producer``, a top-level ``trace_id``), for fleets that
        still run them; it roughly doubles the message's bytes on the wire.
        ``topology="verify"`` creates and updates nothing: the start checks that the streams
        and consumers an operator declared fit the app. ``outbox=engine`` (an SQLAlchemy
        ``AsyncEngine``, or ``OutboxOptions``; the ``[sql]`` extra) adds the transactional
        outbox, ``pubsub.outbox``, whose relay runs while the broker runs.
        ``inbox_prefix`` is where the replies to the app's requests and pulls go (the
        broker's, ``_INBOX`` by default): give each app its own (``"_INBOX_orders"``) and
        allow its user only that, so no other client can read its pulled events. It is set
        on the broker's connection and handed to every subscriber of the app.
        ``circuit_breaker`` is the default of the app's subscribers (on; ``None``: off): after
        several different events failed in a row, a subscriber stops fetching for a
        cooldown instead of walking every event to the DLQ (see :class:`CircuitBreaker`)."""
        if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
            raise ConfigurationError(
                f"circuit_breaker must be a CircuitBreaker or None, not {circuit_breaker!r}"
            )
        if topology not in ("create", "verify"):
            raise ConfigurationError(f"topology must be 'create' or 'verify', not {topology!r}")
        self.topology_mode = topology
        self.broker = broker
        self.env = normalize_env(env)
        self.app = normalize_app(app)
        existing = BrokerHost.find(broker)
        self.inbox_prefix = bind_inbox_prefix(
            broker, inbox_prefix, first_app=existing is None or not existing.hosts_apps
        )
        self.retry = retry or RetryPolicy()
        self.stream_settings = streams or StreamSettings()
        self.topology = Topology()
        declarations = Declarations(
            env=self.env,
            app=self.app,
            retry=self.retry,
            stream_settings=self.stream_settings,
            topology=self.topology,
        )
        declarations.inbox_prefix = self.inbox_prefix
        self.stream = declarations.stream
        self.dlq_stream = dlq_stream_name(self.env, self.app) if dlq else None
        self.dlq_subject_prefix = dlq_subject_prefix(self.env, self.app)
        if self.dlq_stream is not None:
            self.topology.add_stream(
                StreamSpec(
                    name=self.dlq_stream,
                    subjects=(f"{self.dlq_subject_prefix}.>",),
                    settings=dlq_stream_settings(
                        replicas=self.stream_settings.replicas,
                        storage=self.stream_settings.storage,
                        max_age=dlq_max_age,
                        max_bytes=dlq_max_bytes,
                        max_msgs=dlq_max_msgs,
                    ),
                )
            )

        self.codec: Codec = codec or EnvelopeCodec()
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
            compat=compat,
        )
        self.dead_letters = (
            DeadLetterWriter(
                app=self.app,
                stream=self.dlq_stream,
                subject_prefix=self.dlq_subject_prefix,
                codec=self.codec,
                metrics=self.metrics,
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
        self.batch = BatchMiddleware(
            failure=self.failure, envelope=self.envelope, heartbeat=self.heartbeat
        )
        self.runtime = AppRuntime(
            env=self.env,
            app=self.app,
            stream=self.stream,
            envelope=self.envelope,
            failure=self.failure,
            heartbeat=self.heartbeat,
            inbox=self.inbox,
            batch=self.batch,
            dead_letters=self.dead_letters,
            metrics=self.metrics,
            circuit_breaker=circuit_breaker,
        )
        declarations.dlq_stream = self.dlq_stream
        host = BrokerHost.of(broker)
        self.envelope.permissions = host.permissions
        self.outbox: Outbox | None = None
        """The transactional outbox (``outbox=engine``; needs the ``[sql]`` extra)."""
        if outbox is not None:
            from .sql import Outbox  # the [sql] extra: a clear ImportError without it

            self.outbox = Outbox.for_pubsub(self, outbox)
            declarations.publishes = True  # the relay publishes to the app's own stream
        lifecycle = PubsubLifecycle(
            outbox=self.outbox,
            declarations=declarations,
            verify_only=topology == "verify",
            inbox_store=self.inbox_store,
            dead_letters=self.dead_letters,
            publish=broker.publish,
            metrics=self.metrics,
            watch=host.permissions,
            access=self._access,
            handler_targets=self.envelope.targets,
        )
        host.add_app(self.runtime, lifecycle, tracing=tracing)
        self._registrar = TopicRegistrar(
            runtime=self.runtime, declarations=declarations, host=host, lifecycle=lifecycle
        )
        self._publisher = EventPublisher(
            broker=broker,
            runtime=self.runtime,
            subject_for=declarations.subject_for,
            before_publish=lifecycle.own_stream_ready,
            permissions=host.permissions,
        )

    # -- declaring -----------------------------------------------------------------------

    def subscriber(
        self,
        topic: str,
        *,
        app: str | ForeignApp | None = None,
        ack_wait: float = 30.0,
        max_workers: int = 1,
        inbox: bool = True,
        batch: BatchSettings | None = None,
        order_by: OrderBy | None = None,
        circuit_breaker: CircuitBreaker | bool | None = True,
        **faststream_kwargs: Any,
    ) -> LogicSubscriber[Any]:
        """A durable pull subscriber for ``topic`` of this app, or of ``app`` if given.

        ``ack_wait`` is in seconds; ``inbox=False`` opts this subscriber out of the inbox;
        ``batch`` calls the handler once per fetched batch (``list[Item]``), each item
        keeping its own retry, DLQ and inbox outcome. The subscriber fetches ahead of its
        handlers; ``max_workers`` handlers run at once; ``order_by`` (a field name, or a
        callable on the event's message) keeps the events of one key in order while other
        keys run in parallel. ``circuit_breaker``: ``True`` (the default) takes the app's,
        a :class:`CircuitBreaker` its own, ``False`` or ``None`` none (batch subscribers and
        those with their own ``pull_sub`` have none). Other keyword arguments go to
        ``broker.subscriber``; those the facade manages (``stream``, ``config``,
        ``ack_policy``, ...) raise :class:`ConfigurationError` saying what to use instead.
        """
        return self._registrar.subscriber(
            self.broker,
            topic,
            app=app,
            ack_wait=ack_wait,
            max_workers=max_workers,
            inbox=inbox,
            batch=batch,
            faststream_kwargs=faststream_kwargs,
            order_by=order_by,
            circuit_breaker=circuit_breaker,
        )

    def publisher(self, topic: str, **faststream_kwargs: Any) -> LogicPublisher:
        """A FastStream publisher for ``topic``; what it sends is wrapped in the envelope."""
        return self._registrar.publisher(self.broker, topic, faststream_kwargs)

    def router(self, **nats_router_kwargs: Any) -> PubsubRouter:
        """A router whose ``subscriber``/``publisher`` take topics like the facade's; include
        its ``NatsRouter`` with ``broker.include_router(router.nats)``."""
        return PubsubRouter(self._registrar, **nats_router_kwargs)

    def subject_for(self, topic: str) -> str:
        """The subject this app publishes ``topic`` on; wildcards are refused."""
        return self._registrar.declarations.subject_for(topic)

    # -- publishing ----------------------------------------------------------------------

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
        """Publish one event and wait for JetStream to store it.

        ``correlation_id`` (or ``metadata["correlation_id"]``) names the chain the event
        belongs to; without one, an event published while a handler runs continues that
        event's chain, and any other starts its own (its event id). Raises
        :class:`SubjectError`, :class:`EnvelopeError` or :class:`MessageTooLargeError` before
        anything is sent, and :class:`PublishError` when the server did not confirm the
        event after bounded retries (with the same ``Nats-Msg-Id``). ``timeout`` is per
        attempt, in seconds.
        """
        return await self._publisher.publish(
            topic,
            message,
            event_id=event_id,
            occurred_at=occurred_at,
            metadata=metadata,
            correlation_id=correlation_id,
            headers=headers,
            timeout=timeout,
        )

    async def publish_many(
        self,
        items: Iterable[tuple[str, Any]],
        *,
        metadata: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        timeout: float = 5.0,
    ) -> list[PublishResult]:
        """Publish many ``(topic, message)`` pairs pipelined, without awaiting each one.

        Returns one result per item, in order; a failed item has ``error`` set and never
        hides the others. Each item gets its own event id (pass an :class:`OutgoingEvent`
        as the message to choose it). Timed-out items are retried with the same id.
        """
        return await self._publisher.publish_many(
            items, metadata=metadata, correlation_id=correlation_id, timeout=timeout
        )

    @property
    def advisory_watcher(self) -> MaxDeliveriesWatcher | None:
        """The listener that dead-letters events whose consumer gave up (``max_deliver``), while
        the broker runs; its ``handled`` and ``rejected`` (forged advisories) count them."""
        return self._registrar.lifecycle.watcher

    # -- health ----------------------------------------------------------------------------

    async def health(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> HealthReport:
        """Connection, JetStream, this app's streams and consumers: healthy/degraded/unhealthy."""
        try:
            connection: NatsClient | None = self.broker.connection
        except IncorrectState:  # not connected (yet, or any more)
            connection = None
        report = await check_health(
            connection,
            streams=list(self._registrar.declarations.needed().streams),
            consumers=list(self.topology.consumers),
            max_pending=max_pending,
            watch=self._registrar.host.permissions,
        )
        report = self._with_breakers(report)
        permissions = self._registrar.lifecycle.permissions_health()
        if permissions is not None:
            report = HealthReport.from_components({**report.components, "permissions": permissions})
        if self.outbox is not None:
            outbox = await self.outbox.health()
            report = HealthReport.from_components({**report.components, "outbox": outbox})
        return report

    def _with_breakers(self, report: HealthReport) -> HealthReport:
        """Each subscriber's circuit breaker in its consumer's component: its state in the
        data, and degraded while it is not closed (the app waits for a dependency; a restart
        would not help)."""
        components = dict(report.components)
        for plan in self._registrar.lifecycle.plans.values():
            breaker = plan.breaker
            name = f"consumer:{plan.stream}/{plan.durable}"
            current = components.get(name)
            if breaker is None or current is None:
                continue
            status, detail = current.status, current.detail
            if breaker.state is not BreakerState.CLOSED:
                note = f"circuit breaker {breaker.state.value} (last: {breaker.last_error})"
                detail = note if status is HealthStatus.HEALTHY else f"{detail}, {note}"
                if status is HealthStatus.HEALTHY:
                    status = HealthStatus.DEGRADED
            components[name] = ComponentHealth(
                status=status, detail=detail, data={**current.data, **breaker.health()}
            )
        return HealthReport.from_components(components)

    def health_route(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> GetHandler:
        """An ASGI route for FastStream's ``AsgiFastStream``: 200, or 503 when unhealthy.

        ``AsgiFastStream(broker, asgi_routes=[("/health", pubsub.health_route())])``
        """

        async def check() -> HealthReport:
            return await self.health(max_pending=max_pending)

        return health_route(check)

    # -- permissions ---------------------------------------------------------------------

    def permissions(self, *roles: str, inbox_prefix: str | None = None) -> PermissionSet:
        """The least NATS permissions this app needs for ``roles`` (``publisher``,
        ``consumer``, ``health``, ``operator``), derived from its declared topology.

        ``pubsub.permissions("consumer", "health").to_config()`` is the ``permissions {}``
        block of the app's nats-server user; declare every subscriber first.
        ``inbox_prefix`` is the reply prefix of the user the set is for, when it is not the
        app's (an operator running ``natspubsub --inbox-prefix _INBOX_ops``).
        """
        access = self._access()
        if inbox_prefix is not None:
            access = dataclasses.replace(access, inbox_prefix=check_inbox_prefix(inbox_prefix))
        return permissions_for(access, roles)

    def _access(self) -> AppAccess:
        registrar = self._registrar
        kv = self.inbox_store if isinstance(self.inbox_store, KvInboxStore) else None
        consumers = []
        for subscriber, _subject in registrar.lifecycle.subscribers:
            plan = registrar.host.plan_for(subscriber)
            if plan is None:
                continue
            consumers.append(
                ConsumerAccess(
                    stream=plan.stream,
                    durable=plan.durable,
                    filter_subject=plan.subject,
                    inbox=kv is not None and plan.inbox is not None,
                )
            )
        return AppAccess(
            env=self.env,
            app=self.app,
            own_stream=self.stream,
            start_streams=tuple(registrar.declarations.needed().streams),
            consumers=tuple(consumers),
            dlq_stream=self.dlq_stream,
            dlq_prefix=self.dlq_subject_prefix,
            kv_bucket=kv.bucket if kv is not None else None,
            inbox_prefix=self.inbox_prefix,
            verify_only=self.topology_mode == "verify",
        )

    def console(self, **options: Any) -> OperationsConsole:
        """The operations console of this app, an ASGI app on the broker's connection.

        ``AsgiFastStream(broker, asgi_routes=[("/natspubsub", pubsub.console(token=...))])``;
        ``options`` are those of :class:`~faststream_natspubsub.console.OperationsConsole`.
        """
        from .console import OperationsConsole

        return OperationsConsole(
            lambda: self.broker.connection, env=self.env, app=self.app, **options
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def declare_topology(self) -> None:
        """Create or update what the app's roles use (verify only, with ``topology="verify"``);
        runs when the broker starts."""
        await self._registrar.lifecycle.declare(self.broker.connection.jetstream())

    def _make_inbox_store(
        self, inbox: InboxStore | TransactionalInboxStore | str | None, ttl: float
    ) -> InboxStore | TransactionalInboxStore | None:
        if inbox is None or isinstance(inbox, InboxStore | TransactionalInboxStore):
            return inbox
        if inbox == "memory":
            return MemoryInboxStore(ttl=ttl)
        if inbox == "kv":
            return KvInboxStore(
                bucket=inbox_bucket_name(self.env, self.app),
                ttl=ttl,
                replicas=self.stream_settings.replicas,
            )
        raise ConfigurationError(
            f"inbox must be 'memory', 'kv', an InboxStore or None, not {inbox!r}"
        )


def _has_telemetry_middleware(broker: NatsBroker) -> bool:
    """Whether FastStream's telemetry middleware is on ``broker``.

    ``faststream.opentelemetry`` needs ``opentelemetry-semantic-conventions``, which comes with
    the OpenTelemetry SDK, not with the API this package depends on: without it, the
    middleware cannot be on the broker, and the module is not imported at all.
    """
    try:
        from faststream.opentelemetry import TelemetryMiddleware
    except ImportError:
        return False
    return any(isinstance(m, TelemetryMiddleware) for m in broker.middlewares)
