"""What one app does when its broker starts and stops.

On start, connected but before any subscriber pulls: declare what the app's roles use (or,
with ``topology="verify"``, check that an operator declared it), open the KV inbox, subscribe
to the MAX_DELIVERIES advisories (the server sends them on a later pull), and refuse handlers
that can never run. A consumer-only app gets no stream of its own until its first publish.
Once the subscribers run, give each pull subscription the leaner fetch. On stop, stop the
advisory listener.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

from .advisories import MaxDeliveriesWatcher
from .compat import handler_function
from .errors import ConfigurationError
from .inbox import KvInboxStore
from .pull import BatchFetcher

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamManager

    from .codecs.targets import HandlerTargets
    from .declaring import Declarations
    from .dlq import DeadLetterWriter
    from .inbox import InboxStore
    from .metrics import PubsubMetrics
    from .sql import Outbox
    from .transactional import TransactionalInboxStore

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
        # (subscriber, its subject) of every subscriber the app's facade made.
        self.subscribers: list[tuple[Any, str]] = []
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
        own = self.declarations.own_stream_only()
        if self.verify_only:
            await own.verify(self._jsm)
        else:
            await own.declare(self._jsm)
        self._own_stream_pending = False

    async def start(self, connection: NatsClient) -> None:
        for subscriber, subject in self.subscribers:
            check_handler(subscriber, subject)
        if self.handler_targets is not None:
            # Handlers typed with a protobuf class, known before the first message arrives.
            self.handler_targets.inspect(subscriber for subscriber, _ in self.subscribers)
        if self.dead_letters is not None:  # records are sized to the server's limit
            self.dead_letters.max_payload = connection.max_payload
        js = connection.jetstream()
        await self.declare(js)
        if isinstance(self.inbox_store, KvInboxStore):
            await self.inbox_store.bind(js, create=not self.verify_only)
        if self.dead_letters is not None and self.topology.consumers:
            # Before the consumers pull: the server sends the advisory on a later pull.
            self._watcher = MaxDeliveriesWatcher(
                writer=self.dead_letters,
                publish=self.publish,
                consumers=self.topology.consumers,
                metrics=self.metrics,
                inbox=self.inbox_store,
            )
            await self._watcher.start(connection)

    async def started(self, connection: NatsClient) -> None:
        for subscriber, _subject in self.subscribers:
            BatchFetcher.install(getattr(subscriber, "subscription", None))
        if self.outbox is not None:
            await self.own_stream_ready()  # the relay publishes to the app's own stream
            await self.outbox.start(connection)

    async def stop(self) -> None:
        if self.outbox is not None:
            await self.outbox.stop()  # the window in flight still has the connection
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None


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
