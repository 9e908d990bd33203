"""Runs a handler once per event id, across redeliveries, re-publishes and processes.

Placed inside the envelope middleware (it needs the event id). The processed mark is written
right after the handler returns and before the ack, so a crash between the two leaves a
redelivery that is skipped rather than run again.

An event whose claim another consumer holds is NAKed, not run. A first delivery (most likely
a copy racing a live handler) comes back after a couple of seconds; a redelivery (most likely
the message of a consumer that crashed holding the claim) is held back until the lease runs
out, so a crash costs one extra delivery, not one every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final, cast

from faststream.exceptions import AckMessage, NackMessage

from ..compat import (
    current_subscriber,
    in_memory_message,
    subscriber_ack_wait,
    subscriber_durable,
)
from ..inbox import ClaimResult, InboxStore, KvInboxStore, LeaseReporter, inbox_key
from ..metadata import current_inbound
from ..metrics import PubsubMetrics
from ..tracing import record_span_event
from ..transactional import InboxKey, TransactionalInboxStore
from ._delegate import ConsumeDelegate
from .failure import delivery_count
from .heartbeat import DEFAULT_ACK_WAIT
from .transactional import consume_in_transaction, topic_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage


__all__ = ("InboxMiddleware",)

logger = logging.getLogger("faststream_natspubsub.inbox")

# A claim outlives the longest expected redelivery gap: a crashed holder's lease expires
# about when JetStream redelivers its message (after ack_wait).
_MIN_LEASE: Final = 30.0
# How long a first delivery waits before looking again at an event another consumer holds.
_IN_PROGRESS_DELAY: Final = 2.0
# Margin after a lease's expiry, so the held-back redelivery finds it expired.
_LEASE_MARGIN: Final = 0.5
# Pauses between attempts to write a processed mark (the store may be briefly unreachable).
_MARK_RETRY_DELAYS: Final = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)
# Processed events whose mark could not be written, remembered here so this process still
# skips their redeliveries; bounded, oldest forgotten first.
_UNMARKED_LIMIT: Final = 10_000


class InboxMiddleware:
    """Skips events whose id the store already marked processed (ACK without the handler)."""

    def __init__(
        self,
        store: InboxStore | TransactionalInboxStore,
        *,
        metrics: PubsubMetrics | None = None,
    ) -> None:
        # A transactional store (SQL) takes its own branch; ``store`` is then unused.
        self.transactional = store if isinstance(store, TransactionalInboxStore) else None
        self.store = cast("InboxStore", store)
        self.metrics = metrics or PubsubMetrics()
        self.duplicates = 0
        # Subscribers opted out when the middleware is composed by hand.
        self._excluded: weakref.WeakSet[Any] = weakref.WeakSet()
        self._unmarked: OrderedDict[str, None] = OrderedDict()
        # A KV store not bound yet: in memory tests it never is (see stand_in_if_in_memory).
        self._unbound_kv = store if isinstance(store, KvInboxStore) else None

    def stand_in_if_in_memory(self, raw: Any) -> None:
        """Under ``TestNatsBroker`` (messages without a client) the facade never binds the
        KV store: let it keep ids in memory, so ``inbox="kv"`` apps can be unit-tested."""
        store = self._unbound_kv
        if store is None or store.bound:
            self._unbound_kv = None
        elif in_memory_message(raw):
            store.stand_in_for_tests()
            self._unbound_kv = None

    def exclude(self, subscriber: Any) -> None:
        """Opt one subscriber out of the inbox (when composed by hand)."""
        self._excluded.add(subscriber)

    @staticmethod
    def scope(durable: str | None, ack_wait: float) -> tuple[str, float]:
        """The key prefix and lease of a subscriber's claims.

        Keys are ``<durable>.<event_id>``: each durable consumer of an event (two handlers of
        one topic, say) has its own processed mark, so one handler's success never skips the
        other's. A subscriber without a durable name uses the bare event id. A claim outlives
        the longest expected redelivery gap (``ack_wait``) twice over.
        """
        return (f"{durable}." if durable else "", max(ack_wait * 2, _MIN_LEASE))

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> ConsumeDelegate:
        return ConsumeDelegate(msg, context=context, config=self)

    async def consume(
        self,
        context: ContextRepo,
        msg: StreamMessage[Any],
        call_next: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        """Composed by hand: skip a processed event, hold one another consumer handles, else
        claim it and run ``call_next``. Needs the envelope middleware inside it."""
        inbound = current_inbound(context)
        subscriber = current_subscriber(context)
        if inbound is None or subscriber in self._excluded:
            return await call_next(msg)
        if self.transactional is not None:
            mark = InboxKey.of(
                subscriber_durable(subscriber) or "",
                topic_of(inbound.subject),
                inbound.envelope.event_id,
            )
            return await consume_in_transaction(
                self, self.transactional, context, mark, inbound, lambda: call_next(msg)
            )
        prefix, lease = self.scope(
            subscriber_durable(subscriber), subscriber_ack_wait(subscriber) or DEFAULT_ACK_WAIT
        )
        key = inbox_key(prefix, inbound.subject, inbound.envelope.event_id)
        await self.admit(msg.raw_message, key, inbound.subject, lease)
        return await self.run(key, msg, call_next)

    async def admit(self, raw: Any, key: str, subject: str, lease: float) -> None:
        """Claim ``key`` for this delivery; raise ``AckMessage`` for a processed event and a
        delayed ``NackMessage`` for one another consumer holds."""
        if self._unbound_kv is not None:
            self.stand_in_if_in_memory(raw)
        outcome = await self.claim(key, lease=lease)
        if outcome is ClaimResult.PROCESSED:
            self.skipped(subject, key)
            raise AckMessage
        if outcome is ClaimResult.IN_PROGRESS:
            raise NackMessage(delay=await self.in_progress_delay(key, delivery_count(raw), lease))

    async def run(
        self, key: str, msg: StreamMessage[Any], call_next: Callable[[Any], Awaitable[Any]]
    ) -> Any:
        """Run ``call_next`` under a claim of ``key``: mark it processed on success (before
        the ack), release it on failure."""
        try:
            result = await call_next(msg)
        except AckMessage:  # the handler acknowledged it itself: that is processed too
            await self.mark_processed(key)
            raise
        except BaseException:
            await self.release(key)
            raise
        await self.mark_processed(key)
        return result

    async def claim(self, key: str, *, lease: float) -> ClaimResult:
        """The store's answer, or PROCESSED for an event whose mark is still unwritten here."""
        if self._unmarked and key in self._unmarked:
            await self.mark_processed(key, attempts=1)
            return ClaimResult.PROCESSED
        return await self.store.claim(key, lease=lease)

    def skipped(self, subject: str, key: str) -> None:
        """Count, trace and log one duplicate that is acknowledged without the handler."""
        self.duplicates += 1
        if self.metrics.enabled:
            self.metrics.duplicates_skipped.add(1, self.metrics.attributes(subject))
        record_span_event("natspubsub.duplicate_skipped", {"natspubsub.inbox_key": key})
        logger.debug(
            "inbox key %s on %s already processed: acknowledged, handler skipped",
            key,
            subject,
            extra={"natspubsub_inbox_key": key, "natspubsub_subject": subject},
        )

    async def in_progress_delay(self, key: str, deliveries: int, lease: float) -> float:
        """How long to NAK an event another consumer holds (see the module docstring)."""
        if deliveries <= 1:
            delay = _IN_PROGRESS_DELAY
        else:
            remaining: float | None = lease
            if isinstance(self.store, LeaseReporter):
                try:
                    remaining = await self.store.lease_remaining(key)
                except Exception:  # noqa: BLE001 - the store is unreachable: assume a full lease
                    remaining = lease
            delay = min(max((remaining or 0.0) + _LEASE_MARGIN, _IN_PROGRESS_DELAY), lease)
        logger.debug(
            "inbox key %s is being handled elsewhere; NAK for %.1fs",
            key,
            delay,
            extra={"natspubsub_inbox_key": key, "natspubsub_delay": delay},
        )
        return delay

    async def mark_processed(self, key: str, *, attempts: int | None = None) -> None:
        """Write the processed mark, retrying briefly; if the store stays unreachable,
        remember the event here (so this process still skips it) and log an error."""
        delays = _MARK_RETRY_DELAYS if attempts is None else _MARK_RETRY_DELAYS[: attempts - 1]
        error: Exception | None = None
        for delay in (*delays, None):
            try:
                await self.store.mark_processed(key)
            except Exception as exc:  # noqa: BLE001 - any store failure: retry, then remember
                error = exc
                if delay is None:
                    break
                await asyncio.sleep(delay)
            else:
                self._unmarked.pop(key, None)
                return
        if key not in self._unmarked:
            logger.error(
                "could not mark inbox key %s processed in the inbox; this process will still skip "
                "its redeliveries, others may run it again",
                key,
                exc_info=error,
                extra={"natspubsub_inbox_key": key},
            )
        self._unmarked[key] = None
        self._unmarked.move_to_end(key)
        if len(self._unmarked) > _UNMARKED_LIMIT:
            self._unmarked.popitem(last=False)

    async def release(self, key: str) -> None:
        """Give the claim up; if the store is unreachable the lease simply runs out."""
        try:
            await self.store.release(key)
        except Exception:
            logger.warning("could not release the inbox claim of %s", key, exc_info=True)
