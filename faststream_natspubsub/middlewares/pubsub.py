"""The one FastStream middleware layer the facade installs on a broker.

Every NatsPubsub app on a broker shares it (a second middleware would wrap every event
twice). On consume it finds the plan of the subscriber being run and hands the message to
that app's flow (per event, or batch mode); plain FastStream subscribers pass through
untouched. On publish it wraps what goes to ``<env>.<app>.…`` in the envelope of the app
that publishes there.

Each FastStream middleware layer costs a couple of microseconds per message even when it
does nothing; the concerns (failure, heartbeat, envelope, inbox) are plain calls inside this
one layer. Their separate middleware classes stay available for composing by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from faststream import BaseMiddleware

from ..compat import current_subscriber
from ..metadata import current_inbound
from .flow import consume_event

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage
    from faststream.nats.response import NatsPublishCommand

    from ..metadata import InboundEvent
    from ..runtime import AppRuntime, SubscriberPlan

__all__ = ("PubsubMiddleware", "Routes")


class Routes(Protocol):
    """Where the middleware finds an app: by subscriber, and by the subject published to."""

    def plan_for(self, subscriber: Any) -> SubscriberPlan | None: ...

    def publisher_for(self, subject: str) -> AppRuntime | None: ...

    def reader_for(self, subject: str) -> AppRuntime | None: ...


class PubsubMiddleware:
    """Failure handling, heartbeat, envelope, inbox and batch mode of every NatsPubsub app
    on one broker, as one layer."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _Pubsub:
        return _Pubsub(msg, context=context, routes=self.routes)


class _Pubsub(BaseMiddleware["NatsPublishCommand", Any]):
    __slots__ = ("_routes", "inbound")

    def __init__(self, msg: Any, /, *, context: ContextRepo, routes: Routes) -> None:
        super().__init__(msg, context=context)
        self._routes = routes
        # The event being handled: a handler's return value is published after the
        # context value is reset, through this same per-message object.
        self.inbound: InboundEvent | None = None

    def _keep(self, inbound: InboundEvent) -> None:
        self.inbound = inbound

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        context = self.context
        raw = msg.raw_message
        plan = self._routes.plan_for(current_subscriber(context))
        if plan is not None:
            if isinstance(raw, list):
                return await plan.runtime.batch.consume(context, msg, call_next, plan)
            return await consume_event(context, msg, call_next, plan, self._keep)
        # A plain FastStream subscriber (``broker.subscriber``, or TestNatsBroker's stand-in
        # for a publisher): on an app's subject it reads the envelope's message, but gets no
        # retries, DLQ or inbox (those need the facade's durable consumer).
        subject = getattr(raw, "subject", None)
        runtime = self._routes.reader_for(subject) if isinstance(subject, str) else None
        if runtime is None:
            return await call_next(msg)
        return await runtime.envelope.consume(context, msg, call_next, self)

    async def publish_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], cmd: NatsPublishCommand
    ) -> Any:
        runtime = self._routes.publisher_for(cmd.destination)
        if runtime is None:
            return await call_next(cmd)
        inbound = current_inbound(self.context) or self.inbound
        return await runtime.envelope.publish(call_next, cmd, inbound)
