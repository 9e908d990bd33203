"""Runs a handler once per event id, across redeliveries, re-publishes and processes.

Placed inside the envelope middleware (it needs the event id). The processed mark is written
right after the handler returns and before the ack, so a crash between the two leaves a
redelivery that is skipped rather than run again. With ``defer_ack`` (the facade's KV inbox)
the handler's task does not wait for the mark: the ack goes out when the server has stored
it, and the next message starts meanwhile.

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
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

from faststream.exceptions import AckMessage, NackMessage

from ..compat import (
    current_subscriber,
    in_memory_message,
    mark_settled,
    message_client,
    subscriber_ack_wait,
    subscriber_durable,
    write_protocol,
)
from ..inbox import ClaimResult, InboxStore, KvInboxStore, LeaseReporter, inbox_key
from ..metadata import current_inbound
from ..metrics import PubsubMetrics
from ..tracing import record_span_event
from ..transactional import InboxKey, TransactionalInboxStore
from ._delegate import ConsumeDelegate
from .failure import ack_line, delivery_count
from .heartbeat import DEFAULT_ACK_WAIT
from .transactional import CommitsInFlight, consume_in_transaction, topic_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage


__all__ = ("InboxMiddleware", "acknowledgeable")

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
# A stopping subscriber waits this long at most for marks still on their way (then acks).
_DRAIN_TIMEOUT: Final = 10.0


class InboxMiddleware:
    """Skips events whose id the store already marked processed (ACK without the handler)."""

    def __init__(
        self,
        store: InboxStore | TransactionalInboxStore,
        *,
        metrics: PubsubMetrics | None = None,
        defer_ack: bool = False,
    ) -> None:
        # A transactional store (SQL) takes its own branch; ``store`` is then unused.
        self.transactional = store if isinstance(store, TransactionalInboxStore) else None
        self.store = cast("InboxStore", store)
        self.defer_ack = defer_ack and hasattr(store, "mark_started")
        self.metrics = metrics or PubsubMetrics()
        self.duplicates = 0
        # Subscribers opted out when the middleware is composed by hand.
        self._excluded: weakref.WeakSet[Any] = weakref.WeakSet()
        self._unmarked: OrderedDict[str, None] = OrderedDict()
        self._deferred = _AcksAfterMarks(self)
        # A transactional store's batch commits running off their batches' tasks.
        self.commits = CommitsInFlight()
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
        await self.processed(key, msg.raw_message)
        return result

    async def processed(self, key: str, raw: Any) -> None:
        """The handler of ``raw`` succeeded: mark ``key`` processed before the ack. With
        ``defer_ack`` the ack follows the stored mark off the caller's task, and ``raw``
        counts as acknowledged at once (FastStream's own ack then sends nothing)."""
        if self.defer_ack and acknowledgeable(raw):
            await self._deferred.mark_then_ack(key, raw)
        else:
            await self.mark_processed(key)

    async def claim_many(self, keys: list[str], *, lease: float) -> list[ClaimResult]:
        """:meth:`claim` for a batch: one write and one round trip when the store can."""
        outcomes: dict[int, ClaimResult] = {}
        rest: list[int] = []
        for index, key in enumerate(keys):
            if self._unmarked and key in self._unmarked:
                outcomes[index] = await self.claim(key, lease=lease)
            else:
                rest.append(index)
        claim_many = getattr(self.store, "claim_many", None)
        if claim_many is not None:
            results = await claim_many([keys[i] for i in rest], lease=lease)
        else:
            results = [await self.store.claim(keys[i], lease=lease) for i in rest]
        outcomes.update(zip(rest, results, strict=True))
        return [outcomes[index] for index in range(len(keys))]

    async def mark_many(self, keys: list[str]) -> None:
        """:meth:`mark_processed` for a batch: one write, one round trip when the store can."""
        mark_many = getattr(self.store, "mark_many", None)
        if mark_many is None or not keys:
            for key in keys:
                await self.mark_processed(key)
            return
        try:
            errors = await (await mark_many(keys))
        except Exception as exc:  # noqa: BLE001 - not sent: each one takes the retrying path
            errors = [exc] * len(keys)
        for key, error in zip(keys, errors, strict=True):
            if error is None:
                self._unmarked.pop(key, None)
            else:
                await self.mark_processed(key)

    async def mark_many_then_ack(self, keys: list[str], raws: list[Any]) -> bool:
        """Marks for a batch in one write, each message acknowledged once its mark is stored,
        without holding up the batch: True. Without ``defer_ack`` (or if the marks could not
        be sent) the marks are stored when this returns False, and the caller acknowledges.
        """
        if (
            self.defer_ack
            and hasattr(self.store, "mark_many")
            and all(acknowledgeable(raw) for raw in raws)
            and await self._deferred.marks_then_acks(keys, raws)
        ):
            return True
        await self.mark_many(keys)
        return False

    async def drain(self, timeout: float = _DRAIN_TIMEOUT) -> None:
        """Wait until the marks on their way are stored (or the batch commits in flight
        have ended) and their messages acknowledged."""
        await self._deferred.drain(timeout)
        await self.commits.drain(timeout)

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


def acknowledgeable(raw: Any) -> bool:
    """A JetStream message of a live connection, not acknowledged yet."""
    reply = getattr(raw, "reply", "")
    return (
        isinstance(reply, str)
        and reply.startswith("$JS.ACK.")
        and not getattr(raw, "is_acked", True)
        and message_client(raw) is not None
    )


class _AcksAfterMarks:
    """Acknowledgements that wait for their event's processed mark, off the handler's task.

    The message is marked acknowledged locally at once (FastStream's ack then does nothing);
    its ``+ACK`` is written when the server has stored the mark, together with the others
    stored by then. A mark that fails takes the retrying path of ``mark_processed``, then
    the message is acknowledged as it would have been.
    """

    def __init__(self, inbox: InboxMiddleware) -> None:
        self._inbox = inbox
        self._pending: set[asyncio.Future[Any]] = set()
        self._ready: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def mark_then_ack(self, key: str, raw: Any) -> None:
        try:
            stored = await self._inbox.store.mark_started(key)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - not even sent: the retrying path, now
            await self._inbox.mark_processed(key)
            return
        mark_settled(raw)
        self._pending.add(stored)
        stored.add_done_callback(partial(self._stored, key, raw))

    async def marks_then_acks(self, keys: list[str], raws: list[Any]) -> bool:
        """:meth:`mark_then_ack` for a batch, in one write; False if nothing was sent (the
        marks then went the retrying way and the caller acknowledges)."""
        try:
            stored = await self._inbox.store.mark_many(keys)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - not even sent: the retrying path, now
            for key in keys:
                await self._inbox.mark_processed(key)
            return False
        for raw in raws:
            mark_settled(raw)
        self._pending.add(stored)
        stored.add_done_callback(partial(self._batch_stored, keys, raws))
        return True

    def _stored(self, key: str, raw: Any, stored: asyncio.Future[Any]) -> None:
        self._pending.discard(stored)
        if stored.cancelled() or stored.exception() is not None:
            self._spawn(self._mark_again_then_ack(key, raw))
            return
        self._inbox._unmarked.pop(key, None)
        self._ready.append(raw)
        if len(self._ready) == 1:  # the first of this round: one write for all of them
            self._spawn(self._ack_ready())

    def _batch_stored(self, keys: list[str], raws: list[Any], stored: asyncio.Future[Any]) -> None:
        self._pending.discard(stored)
        errors = stored.result()
        first = not self._ready
        for key, raw, error in zip(keys, raws, errors, strict=True):
            if error is None:
                self._inbox._unmarked.pop(key, None)
                self._ready.append(raw)
            else:
                self._spawn(self._mark_again_then_ack(key, raw))
        if first and self._ready:
            self._spawn(self._ack_ready())

    async def _mark_again_then_ack(self, key: str, raw: Any) -> None:
        await self._inbox.mark_processed(key)
        self._ready.append(raw)
        await self._ack_ready()

    async def _ack_ready(self) -> None:
        await asyncio.sleep(0)  # marks answered in the same read join this write
        ready, self._ready = self._ready, []
        by_client: dict[int, tuple[Any, list[bytes]]] = {}
        for raw in ready:
            client = message_client(raw)
            entry = by_client.setdefault(id(client), (client, []))
            entry[1].append(ack_line(raw))
        for client, lines in by_client.values():
            if client is None or client.is_closed:
                continue  # the server redelivers; the inbox then skips it
            try:
                await write_protocol(client, b"".join(lines))
            except Exception:  # the same: redelivered, then skipped
                logger.debug("could not acknowledge %d marked events", len(lines), exc_info=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self._pending or self._tasks:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                logger.warning(
                    "%d processed marks were not confirmed in time; their events may be "
                    "delivered again and are then skipped",
                    len(self._pending),
                )
                return
            await asyncio.wait({*self._pending, *self._tasks}, timeout=remaining)
