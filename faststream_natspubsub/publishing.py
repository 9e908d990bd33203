"""What a publish carries and returns, and the bounded retry that keeps one event stored once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from .errors import PublishError

__all__ = (
    "PUBLISH_RETRY_DELAYS",
    "RETRIABLE_PUBLISH_ERRORS",
    "OutgoingEvent",
    "PublishResult",
    "retry_publish",
)

# Pauses between publish attempts. Each retry carries the same Nats-Msg-Id, so the server
# stores the event once even when an earlier attempt did land and only its PubAck was lost.
PUBLISH_RETRY_DELAYS: Final = (0.05, 0.25)

RETRIABLE_PUBLISH_ERRORS: Final = (
    asyncio.TimeoutError,
    NatsTimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
)

T = TypeVar("T")


@dataclass(slots=True, kw_only=True)
class OutgoingEvent:
    """A message plus the envelope fields a caller chose; the envelope middleware fills the rest.

    Pass one as the body of any FastStream publish to a NatsPubsub subject to control the
    event id, the time or the metadata; plain bodies get fresh values.
    """

    message: Any
    """The payload: a dict, pydantic model or dataclass that serialises to a JSON object."""
    event_id: str | None = None
    """Keep this id (de-duplication key); ``None`` generates a UUIDv4."""
    occurred_at: datetime | None = None
    """When the event happened; ``None`` means now."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Envelope metadata such as ``correlation_id``, ``user_id`` or custom keys."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishResult:
    """What the server said about one published event."""

    event_id: str
    """The envelope's event id (also its ``Nats-Msg-Id``)."""
    subject: str
    """The subject published to."""
    stream: str | None
    """Stream that stored the event."""
    seq: int | None
    """Stream sequence of the stored event (of the first copy for a duplicate)."""
    duplicate: bool = False
    """True when the server had already stored this event id inside its duplicate window."""
    error: BaseException | None = None
    """For ``publish_many``: the failure of this item, if it failed."""

    @property
    def ok(self) -> bool:
        """The event is stored (a duplicate counts: it was stored before)."""
        return self.error is None


async def retry_publish(
    attempt: Callable[[], Awaitable[T]],
    *,
    subject: str,
    delays: tuple[float, ...] = PUBLISH_RETRY_DELAYS,
    already_failed: int = 0,
) -> T:
    """Run ``attempt``, retrying after a timeout or "no responders" a bounded number of times.

    ``already_failed`` counts tries the caller made itself (so the common, successful path
    pays for no retry machinery). Raises :class:`PublishError`, caused by the last failure,
    when every try failed.
    """
    waits = (0.0, *delays)  # before each attempt
    last: BaseException | None = None
    for number, wait in enumerate(waits, start=1):
        if number <= already_failed:
            continue
        if wait:
            await asyncio.sleep(wait)
        try:
            return await attempt()
        except RETRIABLE_PUBLISH_ERRORS as exc:
            last = exc
    raise PublishError(
        f"publish to {subject!r} failed after {len(waits)} attempts: {type(last).__name__}: {last}"
    ) from last
