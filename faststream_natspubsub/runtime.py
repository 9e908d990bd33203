"""What one NatsPubsub app and each of its subscribers need while events flow.

:class:`AppRuntime` groups the configured concerns of one app (envelope, failure handling,
heartbeat, inbox, batch mode); :class:`SubscriberPlan` holds what the facade decided for one
subscriber (its subject, durable, ``ack_wait``, inbox scope, how it fetches and dispatches).
Both are built once, when the app and its subscribers are declared, and only read
afterwards: the middleware finds a subscriber's plan and passes it down, so nothing is read
back from FastStream's objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .batch import BatchSettings
    from .breaker import CircuitBreaker, SubscriberBreaker
    from .dlq import DeadLetterWriter
    from .metrics import PubsubMetrics
    from .middlewares.batch import BatchMiddleware
    from .middlewares.envelope import EnvelopeMiddleware
    from .middlewares.failure import FailureMiddleware
    from .middlewares.heartbeat import AckHeartbeatMiddleware
    from .middlewares.inbox import InboxMiddleware
    from .ordering import KeyOf

__all__ = ("AppRuntime", "SubscriberPlan")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class AppRuntime:
    """The configured concerns of one app (one ``NatsPubsub``)."""

    env: str
    app: str
    stream: str
    """The app's own stream, which holds ``<env>.<app>.>``."""
    envelope: EnvelopeMiddleware
    failure: FailureMiddleware
    heartbeat: AckHeartbeatMiddleware
    inbox: InboxMiddleware | None
    batch: BatchMiddleware
    dead_letters: DeadLetterWriter | None
    metrics: PubsubMetrics
    circuit_breaker: CircuitBreaker | None = None
    """The app's default circuit breaker for its subscribers (None: off)."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SubscriberPlan:
    """What the facade decided for one subscriber."""

    runtime: AppRuntime
    subject: str
    stream: str
    durable: str
    ack_wait: float
    """Seconds; the consumer's ``ack_wait``, also what the heartbeat and inbox lease use."""
    inbox: InboxMiddleware | None
    """The app's inbox, or None when this subscriber opted out (or the app has none)."""
    batch: BatchSettings | None = None
    max_workers: int = 1
    """Handlers of this subscriber running at once."""
    fetch_ahead: bool = False
    """The package's own fetch-ahead dispatch runs this subscriber's messages (see
    :mod:`.dispatch`); False in batch mode and with a ``pull_sub`` of the caller's."""
    order_by: KeyOf | None = None
    """The ordering key of a message (``subscriber(order_by=...)``); None: stream order
    with one worker, no order with several."""
    breaker: SubscriberBreaker | None = None
    """The subscriber's circuit breaker (only with the package's dispatch); None: off."""

    @property
    def heartbeat_interval(self) -> float:
        """How often an in-progress signal keeps this subscriber's messages alive."""
        return self.ack_wait * self.runtime.heartbeat.fraction
