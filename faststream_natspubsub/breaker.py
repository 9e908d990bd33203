"""A circuit breaker per subscriber: stop taking events while a dependency is down.

Without one, an outage of a handler's dependency walks every event through its retries into
the DLQ. With one, after ``failures`` *different* events failed in a row (transient failures,
no success in between) the subscriber stops starting handlers and fetching for a cooldown,
then lets one event through (the probe): success closes the breaker, failure opens it again
for a longer cooldown (doubled each time, up to ``max_cooldown``).

States: ``closed`` → (``failures`` different events failed) → ``open`` → (cooldown over) →
``half_open`` → one probe → ``closed`` on success, ``open`` on failure.

:class:`BreakerMachine` is the pure state machine (an injected clock, no I/O);
:class:`SubscriberBreaker` joins it to one subscriber: which failed deliveries are held in the
client rather than NAKed (the package's dispatch keeps them alive and runs them again later,
so an outage costs them no attempt), the log lines, the metrics, and ``health()``'s view.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

from .errors import one_line

if TYPE_CHECKING:
    from .metrics import PubsubMetrics

__all__ = (
    "DEFAULT_CIRCUIT_BREAKER",
    "BreakerMachine",
    "BreakerState",
    "CircuitBreaker",
    "SubscriberBreaker",
    "Verdict",
)

logger = logging.getLogger("faststream_natspubsub.breaker")
# The last error, as logs and health() show it, is cut to this many characters.
_SHOWN_ERROR_LENGTH: Final = 200

# Different events that must fail in a row before the breaker opens.
DEFAULT_FAILURES: Final = 5
# Seconds the first opening lasts; each failed probe doubles it, up to the maximum.
DEFAULT_COOLDOWN: Final = 5.0
DEFAULT_MAX_COOLDOWN: Final = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreaker:
    """When a subscriber stops taking events because its handler keeps failing.

    On by default (``NatsPubsub(circuit_breaker=CircuitBreaker())``); pass
    ``circuit_breaker=None`` to the app, or ``circuit_breaker=False`` to one subscriber, to
    turn it off.
    """

    failures: int = DEFAULT_FAILURES
    """Different events whose handler failed in a row (a transient failure: one that would be
    retried; no success in between) before the breaker opens. One event failing all its
    attempts counts once: a poison event alone never opens it."""
    cooldown: float = DEFAULT_COOLDOWN
    """Seconds the subscriber stays open (nothing fetched, no handler started) before one
    event is let through."""
    max_cooldown: float = DEFAULT_MAX_COOLDOWN
    """Each failed probe doubles the cooldown, up to this many seconds."""

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError("failures must be at least 1")
        if self.cooldown <= 0:
            raise ValueError("cooldown must be positive seconds")
        if self.max_cooldown < self.cooldown:
            raise ValueError("max_cooldown must be at least cooldown")


DEFAULT_CIRCUIT_BREAKER: Final = CircuitBreaker()
"""What ``NatsPubsub(circuit_breaker=...)`` is by default: on, with the defaults above."""


class BreakerState(str, Enum):
    """Where a subscriber's circuit breaker is."""

    CLOSED = "closed"
    """Events flow."""
    OPEN = "open"
    """Too many failures: nothing is fetched or started until the cooldown ends."""
    HALF_OPEN = "half_open"
    """The cooldown ended: one event (the probe) is let through."""


class Verdict(Enum):
    """What a transient failure did to the breaker."""

    COUNTED = "counted"
    """Closed, below the threshold: the failure is retried as usual (a delayed NAK)."""
    OPENED = "opened"
    """This failure opened the breaker: the event is held."""
    HELD = "held"
    """The breaker was already open: the event is held."""
    REOPENED = "reopened"
    """The probe failed: open again, for a longer cooldown; the event is held."""

    @property
    def holds(self) -> bool:
        """The event stays in the client to run again later (no NAK, no attempt used)."""
        return self is not Verdict.COUNTED


class BreakerMachine:
    """The breaker's state, moved by handler outcomes and the clock; no I/O."""

    def __init__(
        self, config: CircuitBreaker, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.clock = clock
        self._state = BreakerState.CLOSED
        self._failing: set[Hashable] = set()
        self._cooldown = config.cooldown
        self._until = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose cooldown ended is half-open)."""
        if self._state is BreakerState.OPEN and self.clock() >= self._until:
            self._state = BreakerState.HALF_OPEN
            self._probing = False
        return self._state

    @property
    def cooldown(self) -> float:
        """Seconds of the current (or next) opening."""
        return self._cooldown

    @property
    def failing(self) -> int:
        """Different events that failed since the last success (while closed)."""
        return len(self._failing)

    def until_probe(self) -> float | None:
        """Seconds until the probe may start; None unless open."""
        if self.state is not BreakerState.OPEN:
            return None
        return max(self._until - self.clock(), 0.0)

    def may_start(self) -> bool:
        """Whether a handler may start now; in half-open, True once (that start is the probe)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def may_fetch(self) -> bool:
        """Whether messages may be fetched: closed, or half-open with no probe running."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probing
        )

    def failure(self, event: Hashable) -> Verdict:
        """A handler failed transiently on ``event`` (a key that tells events apart)."""
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._cooldown = min(self._cooldown * 2, self.config.max_cooldown)
            self._open()
            return Verdict.REOPENED
        if state is BreakerState.OPEN:
            return Verdict.HELD
        self._failing.add(event)
        if len(self._failing) < self.config.failures:
            return Verdict.COUNTED
        self._cooldown = self.config.cooldown
        self._open()
        return Verdict.OPENED

    def success(self) -> bool:
        """A handler succeeded; True when that closed the breaker."""
        self._failing.clear()
        if self._state is BreakerState.CLOSED:
            return False
        self._state = BreakerState.CLOSED
        self._cooldown = self.config.cooldown
        self._probing = False
        return True

    def probe_ended(self) -> None:
        """The probe's handler ended with neither verdict (a permanent error, a duplicate):
        the next event may be the probe."""
        if self._state is BreakerState.HALF_OPEN:
            self._probing = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._until = self.clock() + self._cooldown
        self._probing = False
        self._failing.clear()


class SubscriberBreaker:
    """The circuit breaker of one subscriber, shared by its dispatch and its event flow.

    The flow reports outcomes (:meth:`failed`, :meth:`succeeded`); a failure the breaker holds
    is remembered until the dispatch takes it back (:meth:`take_held`) and queues the message
    to run again. Holding works only where the package's dispatch runs the subscriber
    (``active``); elsewhere (in memory, batch mode) failures are retried as usual.
    """

    def __init__(
        self,
        config: CircuitBreaker,
        *,
        subject: str,
        durable: str,
        metrics: PubsubMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.machine = BreakerMachine(config, clock=clock)
        self.subject = subject
        self.durable = durable
        self.metrics = metrics
        self.active = False
        """A dispatch runs the subscriber and takes held messages back."""
        self.listener: Callable[[], None] | None = None
        """Called when the state changed (the dispatch wakes its workers, sets its timer)."""
        self.last_error: str | None = None
        self.opened = 0
        """Times it opened since the start (failed probes included)."""
        self._held: set[int] = set()
        self._attributes = {
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.consumer.group.name": durable,
        }

    @property
    def state(self) -> BreakerState:
        return self.machine.state

    def attach(self, listener: Callable[[], None]) -> None:
        """A dispatch runs the subscriber now: held failures come back to it."""
        self.listener = listener
        self.active = True

    def detach(self) -> None:
        """The dispatch ended (the subscriber stopped): nothing is held any more."""
        self.active = False
        self.listener = None
        self._held.clear()

    def failed(self, msg: Any, event: Hashable, exc: BaseException) -> bool:
        """A transient failure of ``msg``; True when it is held (the caller neither NAKs nor
        dead-letters it)."""
        if not self.active:
            return False
        verdict = self.machine.failure(event)
        if not verdict.holds:
            return False
        self._held.add(id(msg))
        self.last_error = f"{type(exc).__qualname__}: {one_line(exc, _SHOWN_ERROR_LENGTH)}"
        if self.metrics.enabled:
            self.metrics.breaker_held.add(1, self._attributes)
        if verdict is Verdict.OPENED:
            self._opened("failures")
            logger.warning(
                "circuit breaker of %s (%s) opened: %d different events failed in a row "
                "(last: %s); no event is fetched or started for %.1fs, then one is let through",
                self.durable,
                self.subject,
                self.machine.config.failures,
                self.last_error,
                self.machine.cooldown,
                extra=self._log_fields(),
            )
        elif verdict is Verdict.REOPENED:
            self._opened("probe_failed")
            logger.info(
                "circuit breaker of %s (%s): the probe failed (%s); open again for %.1fs",
                self.durable,
                self.subject,
                self.last_error,
                self.machine.cooldown,
                extra=self._log_fields(),
            )
        return True

    def succeeded(self) -> None:
        """A handler succeeded."""
        if not self.machine.success():
            return
        self.metrics.breaker_open.add(-1, self._attributes)
        logger.info(
            "circuit breaker of %s (%s) closed: an event was handled; fetching resumes",
            self.durable,
            self.subject,
            extra=self._log_fields(),
        )
        self._notify()

    def take_held(self, msg: Any) -> bool:
        """True (once) when the flow held ``msg``: the dispatch queues it to run again."""
        key = id(msg)
        if key in self._held:
            self._held.discard(key)
            return True
        return False

    def health(self) -> dict[str, Any]:
        """What ``health()`` shows of it, JSON-ready."""
        data: dict[str, Any] = {"circuit_breaker": self.state.value}
        if self.state is not BreakerState.CLOSED:
            data["circuit_breaker_last_error"] = self.last_error
            until = self.machine.until_probe()
            if until is not None:
                data["circuit_breaker_probe_in"] = round(until, 3)
        return data

    def _opened(self, cause: str) -> None:
        self.opened += 1
        if cause == "failures":
            self.metrics.breaker_open.add(1, self._attributes)
        self.metrics.breaker_opened.add(1, {**self._attributes, "natspubsub.cause": cause})
        self._notify()

    def _notify(self) -> None:
        if self.listener is not None:
            self.listener()

    def _log_fields(self) -> dict[str, Any]:
        return {
            "natspubsub_subject": self.subject,
            "natspubsub_durable": self.durable,
            "natspubsub_breaker": self.machine.state.value,
            "natspubsub_cooldown": self.machine.cooldown,
        }
