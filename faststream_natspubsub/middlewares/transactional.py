"""The inbox's branch for a :class:`TransactionalInboxStore` (the SQL inbox).

Per message: open a transaction, insert the processed mark, run the handler with the
transaction's session in FastStream's context (``InboxSession``), commit. A duplicate
(its mark exists) is acknowledged without the handler; anything but success rolls the
mark and the handler's writes back together, and the failure handling decides the rest.

In batch mode one transaction covers the batch: the marks of every claimed item are
inserted at once, items that fail are unmarked before the commit, and the successes are
acknowledged only after it. That commit and those acks run off the batch's task
(:class:`CommitsInFlight`): the subscriber fetches its next batch meanwhile, and that batch
claims only once the commit has ended, so its handler sees the previous batch's writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from faststream.exceptions import AckMessage

from ..transactional import INBOX_SESSION_KEY, InboxKey, key_part

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from faststream import ContextRepo

    from ..metadata import InboundEvent
    from ..transactional import InboxTransaction, TransactionalInboxStore
    from .inbox import InboxMiddleware

__all__ = ("BatchTransaction", "CommitsInFlight", "consume_in_transaction", "topic_of")

logger = logging.getLogger("faststream_natspubsub.inbox")


def topic_of(subject: str) -> str:
    """The topic part of ``<env>.<app>.<topic>`` (the subject itself if it has no such part)."""
    parts = subject.split(".", 2)
    return parts[2] if len(parts) == 3 else subject


async def consume_in_transaction(
    inbox: InboxMiddleware,
    store: TransactionalInboxStore,
    context: ContextRepo,
    key: InboxKey,
    inbound: InboundEvent,
    run: Callable[[], Awaitable[Any]],
    *,
    exhausted: Callable[[], Awaitable[Any]] | None = None,
) -> Any:
    """Run one delivery's handler (``run``) inside the store's transaction.

    ``exhausted`` is called (and must raise) for a claimed delivery that may not run any more:
    the claim is rolled back with everything else, so a replay from the DLQ can run it.
    """
    tx = store.begin()
    try:
        (claimed,) = await tx.claim([key])
        if not claimed:
            inbox.skipped(inbound.subject, inbound.envelope.event_id)
            raise AckMessage
        if exhausted is not None:
            await exhausted()
        with context.scope(INBOX_SESSION_KEY, tx.session):
            try:
                result = await run()
            except AckMessage:  # the handler acknowledged it itself: processed too
                await tx.commit()
                raise
        await tx.commit()
        return result
    finally:
        await tx.rollback()  # after a commit: only closes the session


class BatchTransaction:
    """The transaction of one batch: claims, releases of failed items, one commit."""

    __slots__ = ("_durable", "_inbox", "_keys", "_released", "tx")

    def __init__(
        self, inbox: InboxMiddleware, store: TransactionalInboxStore, durable: str
    ) -> None:
        self._inbox = inbox
        self._durable = durable
        self.tx: InboxTransaction = store.begin()
        self._keys: dict[int, InboxKey] = {}  # id(item) -> its mark, while it is claimed
        self._released: list[InboxKey] = []

    async def claim(self, items: Sequence[Any]) -> list[Any]:
        """Insert the marks; acknowledge duplicates; return the items that are this batch's."""
        # InboxKey.of per item, with the durable's and each subject's parts made once.
        consumer = key_part(self._durable)
        topics: dict[str, str] = {}
        keys: list[InboxKey] = []
        for item in items:
            subject = item.raw.subject
            topic = topics.get(subject)
            if topic is None:
                topic = topics[subject] = key_part(topic_of(subject))
            keys.append(InboxKey(consumer, topic, key_part(item.envelope.event_id)))
        outcomes = await self.tx.claim(keys)
        claimed: list[Any] = []
        for item, key, ok in zip(items, keys, outcomes, strict=True):
            if ok:
                self._keys[id(item)] = key
                claimed.append(item)
            else:
                self._inbox.skipped(item.raw.subject, item.envelope.event_id)
                await item.raw.ack()
        return claimed

    def release(self, item: Any) -> None:
        """``item`` failed: its mark is removed before the commit."""
        key = self._keys.pop(id(item), None)
        if key is not None:
            self._released.append(key)

    def session_scope(self, context: ContextRepo) -> contextlib.AbstractContextManager[Any]:
        """The handler's ``InboxSession`` while it runs."""
        return context.scope(INBOX_SESSION_KEY, self.tx.session)

    async def commit(self) -> None:
        """Unmark the released items, then commit the marks with the handler's writes."""
        if self._released:
            await self.tx.unclaim(self._released)
            self._released = []
        await self.tx.commit()

    async def close(self) -> None:
        """Roll back whatever was not committed and close the session."""
        await self.tx.rollback()


class CommitsInFlight:
    """Batch commits (each followed by its batch's acks) running off the batches' tasks.

    At most one per subscriber: its next batch waits for it (:meth:`wait`) before claiming,
    so batches commit in order, and a stopping subscriber waits for all (:meth:`drain`).
    """

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: dict[int, asyncio.Task[None]] = {}  # id(subscriber's plan) -> its commit

    def start(self, owner: object, work: Awaitable[None]) -> None:
        """Run ``work`` (which handles its own errors) as ``owner``'s commit in flight."""
        key = id(owner)
        task = asyncio.get_running_loop().create_task(_logged(work))
        self._tasks[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(key) is done:
                del self._tasks[key]

        task.add_done_callback(forget)

    async def wait(self, owner: object) -> None:
        """Until ``owner``'s commit in flight (if any) has ended; never cancels it."""
        task = self._tasks.get(id(owner))
        if task is not None:
            await asyncio.wait({task})

    async def drain(self, timeout: float) -> None:
        """Until every commit in flight has ended, for at most ``timeout`` seconds."""
        tasks = set(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            logger.warning(
                "%d batch commits of the SQL inbox did not end in time; their events are "
                "delivered again, and skipped if the commit went through",
                len(pending),
            )


async def _logged(work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:
        logger.exception("a batch commit of the SQL inbox failed unexpectedly")
