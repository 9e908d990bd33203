"""Runs a handler once per event id, across redeliveries, re-publishes and processes.

Placed inside the envelope middleware (it needs the event id). The processed mark is written
right after the handler returns and before the ack, so a crash between the two leaves a
redelivery that is skipped rather than run again.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any, Final

from faststream.exceptions import AckMessage, NackMessage

from ..inbox import ClaimResult, InboxStore
from ..metadata import INBOUND_ATTRIBUTE
from ..metrics import PubsubMetrics
from ..tracing import record_span_event
from ._delegate import ConsumeDelegate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage

    from ..metadata import InboundEvent

__all__ = ("InboxMiddleware",)

logger = logging.getLogger("faststream_natspubsub.inbox")

# A claim outlives the longest expected redelivery gap: a crashed holder's lease expires
# about when JetStream redelivers its message (after ack_wait).
_MIN_LEASE: Final = 30.0
# How long to wait before looking again at an event another consumer is handling.
_IN_PROGRESS_DELAY: Final = 2.0


class InboxMiddleware:
    """Skips events whose id the store already marked processed (ACK without the handler)."""

    def __init__(
        self,
        store: InboxStore,
        *,
        metrics: PubsubMetrics | None = None,
        on_duplicate: Callable[[InboundEvent], None] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or PubsubMetrics()
        self.on_duplicate = on_duplicate
        self.duplicates = 0
        self._excluded: weakref.WeakSet[Any] = weakref.WeakSet()

    def exclude(self, subscriber: Any) -> None:
        """Opt one subscriber out of the inbox."""
        self._excluded.add(subscriber)

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> ConsumeDelegate:
        return ConsumeDelegate(msg, context=context, config=self)

    async def consume(
        self,
        context: ContextRepo,
        msg: StreamMessage[Any],
        call_next: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        """Skip a processed event, hold one another consumer handles, else claim and run."""
        inbound: InboundEvent | None = getattr(msg, INBOUND_ATTRIBUTE, None)
        subscriber = context.get_local("handler_")
        if inbound is None or subscriber in self._excluded:
            return await call_next(msg)
        event_id = inbound.envelope.event_id
        store = self.store
        ack_wait = getattr(getattr(subscriber, "config", None), "ack_wait", None) or 0.0
        outcome = await store.claim(event_id, lease=max(ack_wait * 2, _MIN_LEASE))
        if outcome is ClaimResult.PROCESSED:
            self.duplicates += 1
            if self.metrics.enabled:
                self.metrics.duplicates_skipped.add(1, self.metrics.attributes(inbound.subject))
            record_span_event("natspubsub.duplicate_skipped", {"natspubsub.event_id": event_id})
            if self.on_duplicate is not None:
                self.on_duplicate(inbound)
            logger.debug(
                "event %s on %s already processed: acknowledged, handler skipped",
                event_id,
                inbound.subject,
                extra={"natspubsub_event_id": event_id, "natspubsub_subject": inbound.subject},
            )
            raise AckMessage
        if outcome is ClaimResult.IN_PROGRESS:
            logger.debug("event %s is being handled elsewhere; NAK", event_id)
            raise NackMessage(delay=_IN_PROGRESS_DELAY)
        try:
            result = await call_next(msg)
        except AckMessage:  # the handler acknowledged it itself: that is processed too
            await store.mark_processed(event_id)
            raise
        except BaseException:
            await _release(store, event_id)
            raise
        await store.mark_processed(event_id)
        return result


async def _release(store: InboxStore, event_id: str) -> None:
    """Give the claim up; if the store is unreachable the lease simply runs out."""
    try:
        await store.release(event_id)
    except Exception:
        logger.warning("could not release the inbox claim of %s", event_id, exc_info=True)
