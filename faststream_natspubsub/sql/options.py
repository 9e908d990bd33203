"""``OutboxOptions``: the outbox's engine, tables and relay settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..publishing import PUBLISH_RETRY_DELAYS
from .schema import DEFAULT_PREFIX

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ("OutboxOptions",)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxOptions:
    """How the outbox stores events and how its relay publishes them.

    ``NatsPubsub(broker, ..., outbox=OutboxOptions(engine=engine, retention=3600))``; passing
    the engine alone uses these defaults.
    """

    engine: AsyncEngine
    """SQLAlchemy ``AsyncEngine`` (``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``)."""
    prefix: str = DEFAULT_PREFIX
    """Table name prefix: the table is ``<prefix>outbox``."""
    relay: bool = True
    """Run the relay in this process while the broker runs (False: only add rows here)."""
    batch_size: int = 1000
    """Rows claimed and published per window (their payloads are in memory together:
    lower it for large events)."""
    poll_interval: float = 1.0
    """Seconds between looks at the table when no commit in this process woke the relay."""
    lease: float = 30.0
    """Seconds a relay holds the rows of its window; another relay takes them over after.
    Keep it well inside the stream's duplicate window (2 minutes by default)."""
    publish_timeout: float = 3.0
    """Seconds to wait for a window's PubAcks (per attempt)."""
    max_backoff: float = 60.0
    """Longest pause after failures, of a row or of the relay."""
    retention: float = 24 * 3600.0
    """Seconds a published row is kept (for inspection) before it is deleted."""
    stats_interval: float = 10.0
    """Seconds between reads of the backlog for the metrics."""
    max_lag: float = 60.0
    """``health()`` says degraded when the oldest pending row is older than this (seconds)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        for name in ("poll_interval", "publish_timeout", "max_backoff", "stats_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.retention < 0 or self.max_lag < 0:
            raise ValueError("retention and max_lag must be >= 0")
        window = self.publish_timeout * (len(PUBLISH_RETRY_DELAYS) + 1) + sum(PUBLISH_RETRY_DELAYS)
        if self.lease < 2 * window:
            raise ValueError(
                f"lease ({self.lease}s) must be at least twice a window's longest publish "
                f"({window:g}s with publish_timeout={self.publish_timeout}s)"
            )
