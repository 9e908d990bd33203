"""Batch consumption: one handler call per fetched batch, per-event outcomes kept.

FastStream's per-message pipeline costs most of a pull consumer's CPU; its batch pull
subscriber calls the handler once per fetch. In batch mode each event still gets its own
ACK, delayed NAK or dead-letter record, and the inbox still skips processed ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final

from faststream import Context

from .errors import BatchFailure
from .metadata import EventMetadata

if TYPE_CHECKING:
    from collections.abc import Callable

    from .metadata import InboundEvent

__all__ = (
    "BATCH_CONTEXT_KEY",
    "BatchFailure",
    "BatchMetadata",
    "BatchSettings",
    "InboundBatch",
)

# FastStream context key holding the events of the batch being handled (see metadata.py).
BATCH_CONTEXT_KEY: Final = "natspubsub_batch"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSettings:
    """How a batch subscriber fetches."""

    max_messages: int = 256
    """Largest batch handed to the handler."""
    max_wait: float = 0.1
    """Seconds to wait for a batch to fill before handling what arrived (added latency)."""

    def __post_init__(self) -> None:
        if self.max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if self.max_wait <= 0:
            raise ValueError("max_wait must be positive")


class InboundBatch:
    """The events of the batch being handled; built only if the handler asks for them."""

    __slots__ = ("_events", "_make")

    def __init__(self, make: Callable[[], list[InboundEvent]]) -> None:
        self._make = make
        self._events: list[InboundEvent] | None = None

    @property
    def events(self) -> list[InboundEvent]:
        """One :class:`InboundEvent` per item, in the handler's order."""
        if self._events is None:
            self._events = self._make()
        return self._events

    @property
    def metadata(self) -> list[EventMetadata]:
        """One :class:`EventMetadata` per item, in the handler's order."""
        return [event.metadata for event in self.events]


BatchMetadata = Annotated[list[EventMetadata], Context(f"{BATCH_CONTEXT_KEY}.metadata")]
"""Handler annotation: the metadata of each item of the batch, in order."""
