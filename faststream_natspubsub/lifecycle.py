"""What one app does when its broker starts and stops.

On start, connected but before any subscriber pulls: declare what the app's roles use (or,
with ``topology="verify"``, check that an operator declared it), open the KV inbox, subscribe
to the MAX_DELIVERIES advisories (the server sends them on a later pull), and refuse handlers
that can never run. A consumer-only app gets no stream of its own until its first publish.

A permission the server refuses during start ends it at once with :class:`TopologyError`
naming it; the consumer rights that are refused only in silence (pull, ack, dead-letter,
advisory reader, KV inbox) are tried with harmless probes (:mod:`.permission_probe`), and
every one missing is listed. While the app runs, a refused permission stops the
subscribers that need it (:mod:`.permission_monitor`).

Before the subscribers start, put the package's fetch-ahead dispatch (:mod:`.dispatch`) in
place of FastStream's pull loop for the subscribers it runs (it must replace the loop before
FastStream starts it); once the subscribers run, give the others' pull subscriptions the
leaner fetch (:mod:`.pull`). On stop, stop the advisory listener.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

from .advisories import MaxDeliveriesWatcher
from .compat import handler_function
from .dispatch import Dispatcher, dispatch_settings
from .errors import ConfigurationError, PermissionDeniedError, TopologyError
from .inbox import KvInboxStore
from .inbox_ahead import InboxAhead, drain_on_stop
from .permission_monitor import PermissionMonitor
from .permission_probe import probe_consumer_rights
from .permissions import permissions_for
from .pull import BatchFetcher
from .violations import restore_case

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamManager

    from .codecs.targets import HandlerTargets
    from .declaring import Declarations
    from .dlq import DeadLetterWriter
    from .health import ComponentHealth
    from .inbox import InboxStore
    from .metrics import PubsubMetrics
    from .permissions import AppAccess, PermissionSet
    from .runtime import SubscriberPlan
    from .sql import Outbox
    from .transactional import TransactionalInboxStore
    from .violations import PermissionWatch, Violation

__all__ = ("PubsubLifecycle", "check_handler")


class PubsubLifecycle:
    """Start and stop of one NatsPubsub app (a :class:`~.host.AppLifecycle`)."""

    def __init__(
        self,
        *,
        declarations: Declarations,
        verify_only: bool,
        inbox_store: InboxStore | TransactionalInboxStore | None,
        dead_letters: DeadLetterWriter | None,
        publish: Callable[..., Awaitable[Any]],
        metrics: PubsubMetrics,
        watch: PermissionWatch,
        access: Callable[[], AppAccess],
        handler_targets: HandlerTargets | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.declarations = declarations
        self.topology = declarations.topology
        self.verify_only = verify_only
        self.handler_targets = handler_targets
        self.outbox = outbox
        self.inbox_store = inbox_store
        self.dead_letters = dead_letters
        self.publish = publish
        self.metrics = metrics
        self.watch = watch
        self.access = access
        # (subscriber, its subject) of every subscriber the app's facade made.
        self.subscribers: list[tuple[Any, str]] = []
        self.by_durable: dict[str, Any] = {}
        """Each subscriber by its durable's name."""
        self.plans: dict[Any, SubscriberPlan] = {}
        """Each subscriber's plan (filled by the registrar)."""
        # The fetch-ahead dispatch of each subscriber it runs, installed at the first start;
        # and the subscribers that wait for their inbox's marks on their way when they stop.
        self.dispatchers: dict[Any, Dispatcher] = {}
        self._draining: set[Any] = set()
        self.monitor: PermissionMonitor | None = None
        self._watcher: MaxDeliveriesWatcher | None = None
        self._jsm: JetStreamManager | None = None
        # The own stream was left out at start (no publisher yet): declared on first publish.
        self._own_stream_pending = False

    @property
    def watcher(self) -> MaxDeliveriesWatcher | None:
        """The MAX_DELIVERIES listener while the broker runs (None without DLQ or consumers)."""
        return self._watcher

    async def declare(self, jsm: JetStreamManager) -> None:
        """Declare (or verify) what the app's roles use now."""
        needed = self.declarations.needed()
        if self.verify_only:
            await needed.verify(jsm)
        else:
            await needed.declare(jsm)
        self._jsm = jsm
        self._own_stream_pending = self.declarations.stream not in needed.streams

    async def own_stream_ready(self) -> None:
        """Before a publish: the app's own stream exists (declared now if it was left out)."""
        if not self._own_stream_pending or self._jsm is None:
            return
        own_name = self.declarations.stream
        own = self.declarations.own_stream_only()
        api = f".{self.declarations.stream.lower()}"

        def refuses(violation: Violation) -> bool:  # a request about the own stream
            return self.watch.replies_refused(violation) or (
                violation.subject.startswith("$js.api.stream.") and violation.subject.endswith(api)
            )

        with self.watch.guarding(refuses, name=lambda v: restore_case(v.subject, names=[own_name])):
            if self.verify_only:
                await own.verify(self._jsm)
            else:
                await own.declare(self._jsm)
        self._own_stream_pending = False

    def rights(self) -> PermissionSet:
        """The permissions of the roles the app runs (for naming and the monitor)."""
        access = self.access()
        roles = ("consumer", "publisher", "health") if access.consumers else ("publisher", "health")
        return permissions_for(access, roles)

    async def start(self, connection: NatsClient) -> None:
        for subscriber, subject in self.subscribers:
            check_handler(subscriber, subject)
        self._install_dispatch()
        if self.handler_targets is not None:
            # Handlers typed with a protobuf class, known before the first message arrives.
            self.handler_targets.inspect(subscriber for subscriber, _ in self.subscribers)
        if self.dead_letters is not None:  # records are sized to the server's limit
            self.dead_letters.max_payload = connection.max_payload
            self.dead_letters.watch = self.watch
        access = self.access()
        rights = self.rights()
        mark = self.watch.count
        try:
            with self.watch.guarding(
                lambda _violation: True,
                name=lambda violation: _name(rights, violation),
                what=f"app {access.app!r} cannot start",
            ):
                await self._start(connection)
            if access.consumers:
                store = self.inbox_store
                kv = store.kv if isinstance(store, KvInboxStore) and store.bound else None
                await probe_consumer_rights(connection, self.watch, access, kv)
            refused = self.watch.since(mark)
            if refused:
                raise TopologyError(_missing(access.app, rights, refused))
        except PermissionDeniedError as exc:
            await self.stop()
            raise TopologyError(str(exc)) from exc
        except BaseException:
            await self.stop()
            raise
        self.monitor = PermissionMonitor(permissions=rights, subscribers=self.by_durable)
        self.watch.add_listener(self.monitor)

    async def _start(self, connection: NatsClient) -> None:
        js = connection.jetstream()
        await self.declare(js)
        if isinstance(self.inbox_store, KvInboxStore):
            await self.inbox_store.bind(js, create=not self.verify_only, watch=self.watch)
        if self.dead_letters is not None and self.topology.consumers:
            # Before the consumers pull: the server sends the advisory on a later pull.
            self._watcher = MaxDeliveriesWatcher(
                writer=self.dead_letters,
                publish=self.publish,
                consumers={
                    key: spec.filter_subject for key, spec in self.topology.consumers.items()
                },
                metrics=self.metrics,
                inbox=self.inbox_store,
                watch=self.watch,
            )
            await self._watcher.start(connection)

    def permissions_health(self) -> ComponentHealth | None:
        """What the app's permission monitor reports (None before the first start)."""
        return self.monitor.component() if self.monitor is not None else None

    def _install_dispatch(self) -> None:
        """Before FastStream starts the subscribers: the fetch-ahead dispatch replaces the
        pull loop of those it runs (once per subscriber, kept across restarts)."""
        for subscriber, plan in self.plans.items():
            inbox = plan.inbox
            if not plan.fetch_ahead:
                if (
                    inbox is not None
                    and (inbox.defer_ack or inbox.transactional is not None)
                    and subscriber not in self._draining
                ):  # batch mode: acks follow stored marks or commits in flight
                    drain_on_stop(subscriber, inbox)
                    self._draining.add(subscriber)
                continue
            if subscriber in self.dispatchers:
                continue
            hooks = (
                InboxAhead(
                    inbox,
                    codec=plan.runtime.envelope.reader,
                    durable=plan.durable,
                    ack_wait=plan.ack_wait,
                )
                if inbox is not None and inbox.transactional is None
                else None
            )
            settings = dispatch_settings(
                max_workers=plan.max_workers,
                ack_wait=plan.ack_wait,
                order_by=plan.order_by,
                retry=plan.runtime.failure.retry,
                hooks=hooks,
                breaker=plan.breaker,
            )
            self.dispatchers[subscriber] = Dispatcher.install(subscriber, settings)

    async def started(self, connection: NatsClient) -> None:
        for subscriber, _subject in self.subscribers:
            if subscriber not in self.dispatchers:  # batch mode, or a pull_sub of the caller's
                BatchFetcher.install(getattr(subscriber, "subscription", None))
        if self.outbox is not None:
            await self.own_stream_ready()  # the relay publishes to the app's own stream
            await self.outbox.start(connection)

    async def stop(self) -> None:
        if self.outbox is not None:
            await self.outbox.stop()  # the window in flight still has the connection
        if self.monitor is not None:
            self.watch.remove_listener(self.monitor)
            await self.monitor.close()
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None


def _name(rights: PermissionSet, violation: Violation) -> str:
    """The refused subject as the app knows it: the permission that covers it (a pattern
    such as ``_INBOX_orders.>`` for a reply subscription), else the server's words."""
    permission = rights.find(violation)
    return permission.subject if permission is not None else restore_case(violation.subject)


def _missing(app: str, rights: PermissionSet, refused: list[Violation]) -> str:
    """Every permission the start found refused, in one message."""
    lines: list[str] = []
    for violation in refused:
        permission = rights.find(violation)
        verb = "publish to" if violation.action == "publish" else "subscribe to"
        line = (
            f'{verb} "{permission.subject}" ({permission.purpose})'
            if permission is not None
            else f'{verb} "{restore_case(violation.subject)}"'
        )
        if line not in lines:
            lines.append(line)
    return (
        f"app {app!r} cannot start: permission denied: the user may not\n- "
        + "\n- ".join(lines)
        + "\nadd them to the user's allow lists (`natspubsub permissions` prints all the app "
        "needs)"
    )


def check_handler(subscriber: Any, subject: str) -> None:
    """Refuse a handler whose annotations cannot be resolved: it could never run.

    FastStream resolves string annotations (``from __future__ import annotations``) in the
    handler's module when the first message arrives, and every event would then fail with
    pydantic's "not fully defined". Found at start, it is one clear error instead.
    """
    function = handler_function(subscriber)
    if function is None:
        return
    try:
        typing.get_type_hints(function, include_extras=True)
    except NameError as exc:
        name = getattr(function, "__qualname__", repr(function))
        raise ConfigurationError(
            f"handler {name} of {subject!r} cannot be called: {exc}. Its annotations are "
            "resolved in its module's namespace; define or import that name at module level "
            "(a class defined inside a function is not visible there)"
        ) from exc
    except Exception:  # noqa: BLE001 - only an unresolvable name is certain to fail
        return
