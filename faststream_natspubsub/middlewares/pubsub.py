"""All of the plugin's consume-side concerns in one FastStream middleware layer.

Each FastStream middleware layer costs a couple of microseconds per message even when it
does nothing (an object, a context manager, a partial); the facade installs this one layer
that calls the separate concerns (failure → heartbeat → envelope → inbox, or batch) as
plain coroutines. The separate middleware classes stay available for composing by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faststream import BaseMiddleware

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage
    from faststream.nats.response import NatsPublishCommand

    from ..metadata import InboundEvent
    from .batch import BatchMiddleware
    from .envelope import EnvelopeMiddleware
    from .failure import FailureMiddleware
    from .heartbeat import AckHeartbeatMiddleware
    from .inbox import InboxMiddleware

__all__ = ("PubsubMiddleware",)


class PubsubMiddleware:
    """Failure handling, heartbeat, envelope, inbox and batch mode as one layer."""

    def __init__(
        self,
        *,
        failure: FailureMiddleware,
        heartbeat: AckHeartbeatMiddleware,
        envelope: EnvelopeMiddleware,
        inbox: InboxMiddleware | None = None,
        batch: BatchMiddleware | None = None,
    ) -> None:
        self.failure = failure
        self.heartbeat = heartbeat
        self.envelope = envelope
        self.inbox = inbox
        self.batch = batch

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _Pubsub:
        return _Pubsub(msg, context=context, config=self)


class _Pubsub(BaseMiddleware["NatsPublishCommand", Any]):
    __slots__ = ("_config", "inbound")

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: PubsubMiddleware) -> None:
        super().__init__(msg, context=context)
        self._config = config
        self.inbound: InboundEvent | None = None

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        config = self._config
        context = self.context
        if isinstance(msg.raw_message, list):
            if config.batch is None:
                return await call_next(msg)
            return await config.batch.consume(context, msg, call_next)
        inbox, heartbeat, envelope = config.inbox, config.heartbeat, config.envelope
        if inbox is None:
            handle = call_next
        else:

            async def handle(message: StreamMessage[Any]) -> Any:
                return await inbox.consume(context, message, call_next)

        async def unwrap(message: StreamMessage[Any]) -> Any:
            token = heartbeat.start(context, message.raw_message)
            try:
                return await envelope.consume(context, message, handle, self)
            finally:
                heartbeat.finish(token)

        return await config.failure.consume(context, msg, unwrap, defer_exhausted=inbox is not None)

    async def publish_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], cmd: NatsPublishCommand
    ) -> Any:
        return await self._config.envelope.publish(self.context, call_next, cmd, self)
