"""The transactional inbox protocol: the processed mark commits with the handler's writes.

:class:`~faststream_natspubsub.inbox.InboxStore` claims, marks and releases in separate round
trips, so a crash between a handler's effect and its processed mark runs the effect again.
A :class:`TransactionalInboxStore` instead opens one database transaction per delivery (or
per batch): it inserts the processed marks first, the handler writes through the same
session (the ``InboxSession`` annotation), and one commit makes both durable, or neither.

A mark that already exists means the event was processed: the delivery is acknowledged
without running the handler. Two copies handled at once in different processes race for
the same unique key; the database lets one win, the other sees the winner's mark.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = (
    "INBOX_SESSION_KEY",
    "InboxKey",
    "InboxTransaction",
    "TransactionalInboxStore",
    "key_part",
)

# FastStream context key of the session of the transaction handling the current event.
INBOX_SESSION_KEY: Final = "natspubsub_inbox_session"
# Longest key part stored as it is; longer (or odd) values are stored as their digest.
_MAX_KEY_PART: Final = 200


@dataclass(frozen=True, slots=True)
class InboxKey:
    """What a processed mark is unique on: the consuming durable, the topic and the event id.

    Each durable consumer of an event has its own mark (two handlers of one topic each run
    once), and the topic keeps apart events that share an id across topics. Parts come
    from received bytes, so each is bounded (see :func:`key_part`).
    """

    consumer: str
    topic: str
    event_id: str

    @classmethod
    def of(cls, consumer: str, topic: str, event_id: str) -> InboxKey:
        """A key whose parts are safe to store (bounded, printable)."""
        return cls(key_part(consumer), key_part(topic), key_part(event_id))


def key_part(value: str) -> str:
    """``value`` itself when short and printable, else ``sha256-<hex>`` of it.

    Event ids and subjects are untrusted input: an id of a megabyte, or one with a NUL
    byte (which PostgreSQL refuses in text), must not fail the insert of its mark.
    """
    if len(value) <= _MAX_KEY_PART and value.isprintable():
        return value
    return "sha256-" + hashlib.sha256(value.encode(errors="surrogatepass")).hexdigest()


class InboxTransaction(Protocol):
    """One open transaction of a :class:`TransactionalInboxStore`."""

    @property
    def session(self) -> Any:
        """What a handler gets through ``InboxSession`` (an SQLAlchemy ``AsyncSession``)."""
        ...

    async def claim(self, keys: Sequence[InboxKey]) -> list[bool]:
        """Insert a processed mark for each key; ``True`` where this transaction inserted it.

        ``False`` means the event was processed already (or by a concurrent transaction
        that committed first): skip it. Waiting for a concurrent holder is the store's
        business (PostgreSQL waits on the unique key).
        """
        ...

    async def unclaim(self, keys: Sequence[InboxKey]) -> None:
        """Remove marks this transaction inserted (items that failed in a batch)."""
        ...

    async def commit(self) -> None:
        """Make the marks and the handler's writes durable, together."""
        ...

    async def rollback(self) -> None:
        """Undo everything; also closes the transaction."""
        ...


@runtime_checkable
class TransactionalInboxStore(Protocol):
    """An inbox whose processed marks live in the handler's own database transaction."""

    def begin(self) -> InboxTransaction:
        """A new transaction (not started until its first statement)."""
        ...
