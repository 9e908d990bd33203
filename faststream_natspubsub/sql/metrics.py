"""OpenTelemetry metrics of the outbox: backlog gauges and the relay's counters.

The gauges report what the relay last read from the table (every ``stats_interval``); an
observable gauge's callback cannot wait for a database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from opentelemetry.metrics import CallbackOptions, Observation

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.metrics import Meter

__all__ = ("OUTBOX_METRIC_NAMES", "OutboxMetrics")

# name -> (unit, description); the docs' outbox metrics table is this mapping.
OUTBOX_METRIC_NAMES: Final = {
    "natspubsub.outbox.pending": ("{row}", "Outbox rows waiting to be published"),
    "natspubsub.outbox.oldest_pending_age": ("s", "Age of the oldest pending outbox row"),
    "natspubsub.outbox.published": ("{row}", "Outbox rows the relay published"),
    "natspubsub.outbox.failed": ("{row}", "Outbox rows refused for good (moved to failed)"),
}


@dataclass(slots=True)
class _Backlog:
    pending: int = 0
    oldest_pending_at: float | None = None  # unix time


class OutboxMetrics:
    """The outbox's instruments on the facade's meter, labelled with the stream."""

    def __init__(self, meter: Meter, stream: str) -> None:
        self.attributes = {"messaging.system": "nats", "natspubsub.stream": stream}
        self.backlog = _Backlog()
        self.observed = False  # True once the relay has read the table

        def describe(name: str) -> tuple[str, str]:
            return OUTBOX_METRIC_NAMES[name]

        unit, text = describe("natspubsub.outbox.published")
        self.published = meter.create_counter(
            "natspubsub.outbox.published", unit=unit, description=text
        )
        unit, text = describe("natspubsub.outbox.failed")
        self.failed = meter.create_counter("natspubsub.outbox.failed", unit=unit, description=text)
        unit, text = describe("natspubsub.outbox.pending")
        meter.create_observable_gauge(
            "natspubsub.outbox.pending", callbacks=[self._pending], unit=unit, description=text
        )
        unit, text = describe("natspubsub.outbox.oldest_pending_age")
        meter.create_observable_gauge(
            "natspubsub.outbox.oldest_pending_age",
            callbacks=[self._oldest_age],
            unit=unit,
            description=text,
        )

    def record_backlog(self, pending: int, oldest_pending_at: float | None) -> None:
        """What the relay read from the table."""
        self.backlog = _Backlog(pending, oldest_pending_at)
        self.observed = True

    def _pending(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.observed:
            yield Observation(self.backlog.pending, self.attributes)

    def _oldest_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.observed:
            oldest = self.backlog.oldest_pending_at
            age = 0.0 if oldest is None else max(time.time() - oldest, 0.0)
            yield Observation(age, self.attributes)
