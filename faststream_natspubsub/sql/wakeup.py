"""Wake the relay when a transaction that added outbox rows commits in this process.

Rows committed by other processes are found by polling; those committed here are published
at once: ``Outbox.add`` registers a callback on the session, which SQLAlchemy calls after
the commit (``after_commit`` of the sync session behind the ``AsyncSession``, on the event
loop's thread). After a rollback it stays armed: the next commit of that session wakes the
relay for nothing, which costs one empty claim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from sqlalchemy import event

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

__all__ = ("wake_after_commit",)

_KEY: Final = "natspubsub_outbox_wake"


def wake_after_commit(session: AsyncSession, wake: Callable[[], None]) -> None:
    """Call ``wake`` once after ``session``'s current transaction commits."""
    sync = session.sync_session
    pending: dict[int, Callable[[], None]] | None = sync.info.get(_KEY)
    if pending is None:
        pending = sync.info[_KEY] = {}
        if not event.contains(sync, "after_commit", _on_commit):
            event.listen(sync, "after_commit", _on_commit)
    pending[id(wake)] = wake


def _on_commit(sync: Session) -> None:
    pending: dict[int, Callable[[], None]] = sync.info.pop(_KEY, None) or {}
    for wake in pending.values():
        wake()
