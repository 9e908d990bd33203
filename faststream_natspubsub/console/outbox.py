"""The outbox's lag on the overview: a small hook any outbox implementation can fill.

The console does not know how an outbox stores its rows; it asks a provider for three
numbers. A provider is an object with an ``outbox_stats()`` method, or a callable; either
may be sync or async::

    pubsub.console(outbox=lambda: OutboxStats(pending=3, oldest_pending_age=1.5, failed=0))
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

__all__ = ("OutboxProvider", "OutboxStats", "OutboxStatsProvider", "read_outbox_stats")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStats:
    """How far the outbox relay is behind."""

    pending: int
    """Rows committed and not yet published."""
    oldest_pending_age: float | None
    """Seconds since the oldest pending row was written; ``None`` when nothing is pending."""
    failed: int
    """Rows the relay gave up on (refused by the server); they need a person."""


@runtime_checkable
class OutboxStatsProvider(Protocol):
    """An object that reports outbox lag (the SQL outbox can implement this)."""

    def outbox_stats(self) -> OutboxStats | Awaitable[OutboxStats]:
        """Current numbers; may be a coroutine."""
        ...


OutboxProvider: TypeAlias = OutboxStatsProvider | Callable[[], OutboxStats | Awaitable[OutboxStats]]
"""What ``outbox=`` accepts: a provider object or a function returning :class:`OutboxStats`."""


async def read_outbox_stats(provider: OutboxProvider) -> OutboxStats:
    """Ask ``provider`` for its numbers; raises ``TypeError`` if it answers something else."""
    call = provider.outbox_stats if isinstance(provider, OutboxStatsProvider) else provider
    result = call()
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, OutboxStats):
        raise TypeError(f"an outbox provider must return OutboxStats, not {type(result).__name__}")
    return result
