"""OpenTelemetry metrics of the plugin, through ``opentelemetry-api`` (no-op without an SDK).

FastStream's own ``NatsTelemetryMiddleware`` already measures publish and process durations
under the ``messaging.*`` names; these count what only this package knows (retries,
dead letters, duplicates, heartbeats, circuit breakers) and use the messaging attribute names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from opentelemetry import metrics

from .compat import sdk_meter_provider_installed

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ("METRIC_NAMES", "PubsubMetrics")

SYSTEM: Final = "nats"
# name -> (unit, description); the docs' metrics table is this mapping.
METRIC_NAMES: Final = {
    "natspubsub.messages.published": ("{message}", "Events stored by JetStream (PubAck)"),
    "natspubsub.messages.consumed": ("{message}", "Deliveries decoded as envelopes"),
    "natspubsub.messages.acked": ("{message}", "Deliveries acknowledged after success"),
    "natspubsub.messages.retried": ("{message}", "Deliveries NAKed with a delay to retry"),
    "natspubsub.messages.dead_lettered": ("{message}", "Events written to the DLQ, by reason"),
    "natspubsub.messages.duplicates_skipped": ("{message}", "Deliveries the inbox skipped"),
    "natspubsub.dlq.full": ("{message}", "Dead-letter writes refused: the DLQ stream is full"),
    "natspubsub.heartbeats": ("{signal}", "In-progress signals sent for slow handlers"),
    "natspubsub.handler.duration": ("s", "Handler time, validation included"),
    "natspubsub.end_to_end.latency": ("s", "Time from occurred_at to the handler's start"),
    "natspubsub.breaker.opened": (
        "{opening}",
        "Circuit breaker openings, by cause (failures, probe_failed)",
    ),
    "natspubsub.breaker.open": ("{subscriber}", "Subscribers whose circuit breaker is not closed"),
    "natspubsub.breaker.held": (
        "{message}",
        "Failed deliveries held in the client by an open circuit breaker (no NAK)",
    ),
}


class PubsubMetrics:
    """The instruments, created once per facade (or per hand-built middleware)."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        from . import __name__ as package

        # Without an SDK every instrument is a no-op; the hot paths then skip the work
        # (clock reads, timestamp parsing) that only feeds them. Configure the SDK's
        # MeterProvider before creating NatsPubsub, or pass ``meter_provider``.
        self.enabled = meter_provider is not None or sdk_meter_provider_installed()
        self.meter = meter = metrics.get_meter(package, meter_provider=meter_provider)

        def counter(name: str) -> metrics.Counter:
            unit, description = METRIC_NAMES[name]
            return meter.create_counter(name, unit=unit, description=description)

        def histogram(name: str) -> metrics.Histogram:
            unit, description = METRIC_NAMES[name]
            return meter.create_histogram(name, unit=unit, description=description)

        self.published = counter("natspubsub.messages.published")
        self.consumed = counter("natspubsub.messages.consumed")
        self.acked = counter("natspubsub.messages.acked")
        self.retried = counter("natspubsub.messages.retried")
        self.dead_lettered = counter("natspubsub.messages.dead_lettered")
        self.duplicates_skipped = counter("natspubsub.messages.duplicates_skipped")
        self.dlq_full = counter("natspubsub.dlq.full")
        self.heartbeats = counter("natspubsub.heartbeats")
        self.handler_duration = histogram("natspubsub.handler.duration")
        self.end_to_end_latency = histogram("natspubsub.end_to_end.latency")
        self.breaker_opened = counter("natspubsub.breaker.opened")
        unit, description = METRIC_NAMES["natspubsub.breaker.open"]
        self.breaker_open = meter.create_up_down_counter(
            "natspubsub.breaker.open", unit=unit, description=description
        )
        self.breaker_held = counter("natspubsub.breaker.held")
        self._attributes: dict[str, dict[str, str]] = {}

    def attributes(self, subject: str) -> dict[str, str]:
        """``messaging.system`` and ``messaging.destination.name``, cached per subject."""
        found = self._attributes.get(subject)
        if found is None:
            found = {"messaging.system": SYSTEM, "messaging.destination.name": subject}
            if len(self._attributes) < 10_000:  # wildcard-heavy apps must not grow this
                self._attributes[subject] = found
        return found
