"""The inbox middleware's branch for a :class:`TransactionalInboxStore` (the SQL inbox).

Per message: open a transaction, insert the processed mark, run the handler with the
transaction's session in FastStream's context (``InboxSession``), commit. A duplicate
(its mark exists) is acknowledged without the handler; anything but success rolls the
mark and the handler's writes back together, and the failure middleware decides the rest.

In batch mode one transaction covers the batch: the marks of every claimed item are
inserted at once, items that fail are unmarked before the commit, and the successes are
acknowledged only after it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from faststream.exceptions import AckMessage

from ..transactional import INBOX_SESSION_KEY, InboxKey
from .failure import EXHAUSTED_ATTRIBUTE, AttemptsExhausted

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from faststream import ContextRepo
    from faststream.message import StreamMessage

    from ..envelope import Envelope
    from ..metadata import InboundEvent
    from ..transactional import InboxTransaction, TransactionalInboxStore
    from .inbox import InboxMiddleware

__all__ = ("BatchTransaction", "consume_in_transaction", "inbox_key")


def inbox_key(subscriber: Any, subject: str, event_id: str) -> InboxKey:
    """The mark's key: the subscriber's durable, the subject's topic, the event id."""
    durable = getattr(getattr(subscriber, "config", None), "durable_name", None) or ""
    topic = subject.split(".", 2)[2] if subject.count(".") >= 2 else subject
    return InboxKey.of(durable, topic, event_id)


async def consume_in_transaction(
    inbox: InboxMiddleware,
    store: TransactionalInboxStore,
    context: ContextRepo,
    msg: StreamMessage[Any],
    call_next: Callable[[Any], Awaitable[Any]],
    inbound: InboundEvent,
    subscriber: Any,
) -> Any:
    """Run one delivery's handler inside the store's transaction (see the module docstring)."""
    key = inbox_key(subscriber, inbound.subject, inbound.envelope.event_id)
    tx = store.begin()
    try:
        (claimed,) = await tx.claim([key])
        if not claimed:
            inbox.skipped(inbound.subject, inbound.envelope.event_id)
            if inbox.on_duplicate is not None:
                inbox.on_duplicate(inbound)
            raise AckMessage
        if getattr(msg, EXHAUSTED_ATTRIBUTE, False):
            raise AttemptsExhausted  # rolled back: a replay from the DLQ must run it
        with context.scope(INBOX_SESSION_KEY, tx.session):
            try:
                result = await call_next(msg)
            except AckMessage:  # the handler acknowledged it itself: processed too
                await tx.commit()
                raise
        await tx.commit()
        return result
    finally:
        await tx.rollback()  # after a commit: only closes the session


class BatchTransaction:
    """The transaction of one batch: claims, releases of failed items, one commit."""

    __slots__ = ("_inbox", "_keys", "_released", "_subscriber", "tx")

    def __init__(
        self, inbox: InboxMiddleware, store: TransactionalInboxStore, subscriber: Any
    ) -> None:
        self._inbox = inbox
        self._subscriber = subscriber
        self.tx: InboxTransaction = store.begin()
        self._keys: dict[int, InboxKey] = {}  # id(item) -> its mark, while it is claimed
        self._released: list[InboxKey] = []

    async def claim(self, items: Sequence[Any]) -> list[Any]:
        """Insert the marks; acknowledge duplicates; return the items that are this batch's."""
        envelopes: list[Envelope] = [item.envelope for item in items]
        keys = [
            inbox_key(self._subscriber, item.raw.subject, envelope.event_id)
            for item, envelope in zip(items, envelopes, strict=True)
        ]
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
