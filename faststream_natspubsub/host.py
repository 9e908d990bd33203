"""The NatsPubsub apps hosted on one FastStream broker.

A modular monolith, or an in-memory test spanning several services, puts several
``NatsPubsub`` apps on one ``NatsBroker``. They share one middleware layer (two would wrap
each event twice) and one start hook; each keeps its own retry policy, DLQ, inbox and
topology. :meth:`BrokerHost.of` finds the host through the broker's own middleware list, so
there is no registry outside the broker.

Lifecycle: FastStream has no hook between a broker's connect and its subscribers' start,
where streams and consumers must be declared; the host wraps this broker instance's
``start`` and ``stop`` once (``TestNatsBroker`` patches ``start`` the same way and restores
it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .compat import mark_tls_stream
from .connection import ConnectionWatch
from .errors import ConfigurationError, SubjectError
from .middlewares.pubsub import PubsubMiddleware
from .tracing import TraceContextMiddleware

if TYPE_CHECKING:
    from collections.abc import Iterator

    from faststream.nats import NatsBroker
    from nats.aio.client import Client as NatsClient

    from .runtime import AppRuntime, SubscriberPlan
    from .violations import PermissionWatch

__all__ = ("AppLifecycle", "BrokerHost", "HostedApp")


class AppLifecycle(Protocol):
    """What one app does when its broker starts and stops."""

    async def start(self, connection: NatsClient) -> None:
        """Connected, subscribers not started yet: declare topology, start listeners."""
        ...

    async def started(self, connection: NatsClient) -> None:
        """The broker's subscribers run now."""
        ...

    async def stop(self) -> None:
        """The broker is stopping."""
        ...


class HostedApp:
    """One app on the broker: its runtime and its lifecycle."""

    __slots__ = ("lifecycle", "runtime")

    def __init__(self, runtime: AppRuntime, lifecycle: AppLifecycle) -> None:
        self.runtime = runtime
        self.lifecycle = lifecycle


class BrokerHost:
    """Routes messages of one broker to the apps it hosts; starts and stops them."""

    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker
        self.middleware = PubsubMiddleware(self)
        # env -> app -> hosted app; publish dispatch reads the subject's first two tokens.
        self._apps: dict[str, dict[str, HostedApp]] = {}
        self._plans: dict[Any, SubscriberPlan] = {}
        self._trace_context: TraceContextMiddleware | None = None
        # Hears the connection's errors: a TLS failure ends the start at once.
        self._connection_watch = ConnectionWatch(broker)
        self._wrap_lifecycle()

    @property
    def permissions(self) -> PermissionWatch:
        """The permission violations heard on the broker's connection."""
        return self._connection_watch.permissions

    @classmethod
    def of(cls, broker: NatsBroker) -> BrokerHost:
        """The host of ``broker``, created (and its middleware installed) on first use."""
        found = cls.find(broker)
        if found is not None:
            return found
        host = cls(broker)
        broker.add_middleware(host.middleware)
        return host

    @staticmethod
    def find(broker: Any) -> BrokerHost | None:
        """The host of ``broker`` if a NatsPubsub app was created on it."""
        for middleware in getattr(broker, "middlewares", ()):
            if isinstance(middleware, PubsubMiddleware) and isinstance(
                middleware.routes, BrokerHost
            ):
                return middleware.routes
        return None

    # -- registration --------------------------------------------------------------------

    def add_app(self, runtime: AppRuntime, lifecycle: AppLifecycle, *, tracing: bool) -> None:
        """Host one more app; an (env, app) pair may be hosted once per broker."""
        apps = self._apps.setdefault(runtime.env, {})
        if runtime.app in apps:
            raise ConfigurationError(
                f"a NatsPubsub app {runtime.app!r} in env {runtime.env!r} is already on this "
                "broker; create it once and share it (e.g. through a module or a router)"
            )
        apps[runtime.app] = HostedApp(runtime, lifecycle)
        if tracing:
            self._trace_envelopes_of(runtime.env)

    def add_subscriber(self, subscriber: Any, plan: SubscriberPlan) -> None:
        """Route the messages of ``subscriber`` (made by an app's facade) to its app."""
        self._plans[subscriber] = plan

    @property
    def hosts_apps(self) -> bool:
        """Whether an app was added already."""
        return any(self._apps.values())

    @property
    def apps(self) -> Iterator[AppRuntime]:
        """Every hosted app, in the order they were created."""
        for apps in self._apps.values():
            for hosted in apps.values():
                yield hosted.runtime

    # -- routing -------------------------------------------------------------------------

    def plan_for(self, subscriber: Any) -> SubscriberPlan | None:
        """The plan of a facade's subscriber; None for plain FastStream subscribers."""
        if subscriber is None:
            return None
        return self._plans.get(subscriber)

    def publisher_for(self, subject: str) -> AppRuntime | None:
        """The app whose envelope wraps a publish to ``subject``; None if no app's env.

        ``<env>.<app>.…`` goes to that app. A subject of another app in a hosted env (its
        topics are not this broker's to publish) goes to the env's only app; with several,
        which app publishes is ambiguous and the publish is refused.
        """
        apps, runtime = self._by_subject(subject)
        if runtime is None and apps:
            raise SubjectError(
                f"cannot publish to {subject!r}: it is no topic of the apps on this broker "
                f"({', '.join(sorted(apps))}); publish through the facade of the app that "
                "owns it"
            )
        return runtime

    def reader_for(self, subject: str) -> AppRuntime | None:
        """The app whose envelope a plain FastStream subscriber of ``subject`` reads through
        (the subject's app, or the env's only app); None when there is none."""
        return self._by_subject(subject)[1]

    def _by_subject(self, subject: str) -> tuple[dict[str, HostedApp], AppRuntime | None]:
        env, _, rest = subject.partition(".")
        apps = self._apps.get(env)
        if apps is None:
            return {}, None
        hosted = apps.get(rest.partition(".")[0])
        if hosted is None and len(apps) == 1:
            hosted = next(iter(apps.values()))
        return apps, None if hosted is None else hosted.runtime

    # -- lifecycle -----------------------------------------------------------------------

    def _trace_envelopes_of(self, env: str) -> None:
        if self._trace_context is None:
            self._trace_context = TraceContextMiddleware(subject_prefix=f"{env}.")
            # First of all: its on_receive must fill traceparent before telemetry reads it.
            self.broker.insert_middleware(self._trace_context)
        else:
            self._trace_context.add_prefix(f"{env}.")

    def _hosted(self) -> list[HostedApp]:
        return [hosted for apps in self._apps.values() for hosted in apps.values()]

    def _wrap_lifecycle(self) -> None:
        broker = self.broker
        original_start, original_stop = broker.start, broker.stop

        async def start() -> None:
            connection = await self._connection_watch.connect(broker.connect)
            mark_tls_stream(connection)
            started: list[HostedApp] = []
            try:
                for hosted in self._hosted():
                    # Publishes are sized to this server's limit (headers included).
                    hosted.runtime.envelope.max_payload = connection.max_payload
                    await hosted.lifecycle.start(connection)
                    started.append(hosted)
            except BaseException:
                for hosted in reversed(started):
                    await hosted.lifecycle.stop()
                await original_stop()  # do not leave a connection behind
                raise
            await original_start()
            for hosted in self._hosted():
                await hosted.lifecycle.started(connection)

        async def stop(*args: Any, **kwargs: Any) -> None:
            for hosted in reversed(self._hosted()):
                await hosted.lifecycle.stop()
            await original_stop(*args, **kwargs)

        broker.start = start  # type: ignore[method-assign]
        broker.stop = stop  # type: ignore[method-assign]
