"""The per-message object FastStream asks a middleware factory for, shared by our middlewares.

Their logic lives on the configured (shared) object, as ``consume(context, msg, call_next)``,
so the combined :class:`~faststream_natspubsub.middlewares.PubsubMiddleware` can call it
without a FastStream layer per concern.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from faststream import BaseMiddleware

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage

__all__ = ("ConsumeDelegate",)


class _Consumer(Protocol):
    async def consume(
        self,
        context: ContextRepo,
        msg: StreamMessage[Any],
        call_next: Callable[[Any], Awaitable[Any]],
    ) -> Any: ...


class ConsumeDelegate(BaseMiddleware):
    """Hands ``consume_scope`` to the configured middleware's ``consume``."""

    __slots__ = ("_config",)

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: _Consumer) -> None:
        super().__init__(msg, context=context)
        self._config = config

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        return await self._config.consume(self.context, msg, call_next)
