"""Retry settings and the pure function that turns an attempt number into a delay."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ("DEFAULT_BACKOFF", "MAX_DELIVER_HEADROOM", "RetryPolicy")

# Seconds to wait after the 1st, 2nd, ... failed delivery (NatsPubsub's defaults).
DEFAULT_BACKOFF: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
# Deliveries the consumer allows beyond max_attempts, so an event whose dead-lettering failed
# on its last attempt is delivered again (and dead-lettered then) instead of being dropped.
MAX_DELIVER_HEADROOM: Final = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often a failing event is tried and how long to wait in between.

    The delay is computed here and sent with a delayed NAK; the consumer has no server-side
    ``backoff`` list, because the server stretches delayed NAKs when one is set.
    """

    max_attempts: int = 5
    """Deliveries that run the handler before the event is dead-lettered."""
    backoff: tuple[float, ...] = DEFAULT_BACKOFF
    """Delay in seconds after the n-th failure is ``backoff[n-1]``."""
    multiplier: float = 2.0
    """Beyond the list, each further failure multiplies the last delay by this."""
    max_backoff: float = 60.0
    """No delay is longer than this many seconds."""
    jitter: float = 0.0
    """Spread each delay by up to this fraction either way (0.1 = ±10 %)."""
    retry_on: tuple[type[BaseException], ...] = ()
    """Exception types that are always retried, even if they would be permanent."""
    dead_letter_on: tuple[type[BaseException], ...] = ()
    """Exception types that skip retries and go to the dead-letter queue at once."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if any(delay < 0 for delay in self.backoff) or self.max_backoff < 0:
            raise ValueError("delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    @property
    def max_deliver(self) -> int:
        """The consumer's ``max_deliver``: the attempts plus headroom for dead-lettering."""
        return self.max_attempts + MAX_DELIVER_HEADROOM

    def delay_for(self, attempt: int, *, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``attempt``-th failed delivery (1-based).

        >>> RetryPolicy().delay_for(1), RetryPolicy().delay_for(5), RetryPolicy().delay_for(6)
        (1.0, 30.0, 60.0)
        """
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        if not self.backoff:
            delay = 0.0
        elif attempt <= len(self.backoff):
            delay = float(self.backoff[attempt - 1])
        else:
            extra = min(attempt - len(self.backoff), 64)  # avoid float overflow
            delay = self.backoff[-1] * self.multiplier**extra
        delay = min(delay, self.max_backoff)
        if self.jitter:
            delay *= 1 + self.jitter * (2 * rand() - 1)
        return max(delay, 0.0)
