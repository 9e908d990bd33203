"""A faster ``fetch`` for the pull subscriptions of the facade's subscribers.

nats-py's ``PullSubscription.fetch(n)`` waits for each of the ``n`` messages with its own
``next_msg`` call, and each of those creates a task and a timer (``asyncio.wait_for``): about
20 µs per message on these machines, more than the rest of batch mode together. This fetch
sends the same pull request, waits once for the first message, and then takes whatever has
arrived from the subscription's queue without waiting per message.

A fetch that has begun a batch fills it: while the last message says the server has more
pending, it waits (within its timeout) for the rest, asking for it if no request is running.
FastStream before 0.7.8 hands the handler whatever one fetch returns, so without this a batch
would end wherever a socket read happened to stop; 0.7.8 fetches again for the rest, and now
gets it in one call. When the last message said the consumer has nothing more pending, the
fetch ends at once instead of waiting out ``max_wait``, as nats-py's ``no_wait`` request would:
a batch is handled as soon as the stream is drained, not ``max_wait`` later.

It keeps nats-py's accounting (pending bytes, ``task_done``); the server's status messages
are read by a :class:`~faststream_natspubsub.pull_requests.PullLedger`: a refused request (a
409, say because the consumer's ``max_batch`` is below the batch size) holds the next one back
for a moment and is logged once, instead of being asked again thousands of times a second,
and no status raises from the middle of a read. Messages of an earlier request that arrive
after their fetch returned stay queued for the next one, as with nats-py; when the
subscription is closed (the subscriber stops) those left over are NAKed, so the server
redelivers them at once instead of after ``ack_wait``; so are those a fetch had collected
when it was cancelled.

:meth:`BatchFetcher.install` replaces the ``fetch`` and ``unsubscribe`` of one subscription
object; it leaves the subscription alone when nats-py's internals are not what it expects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError

from .compat import HostVersionError, PullParts, pull_parts, took_from_queue
from .pull_requests import PullLedger

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ("BatchFetcher",)

logger = logging.getLogger("faststream_natspubsub.pull")

# Expiry of a pull request when the caller gives no timeout.
_DEFAULT_EXPIRES: Final = 5.0
# Below this, the server refuses or immediately ends a request's expiry: use no expiry limit
# shorter than it.
_MIN_EXPIRES: Final = 0.01


class BatchFetcher:
    """``fetch(batch, timeout)`` for one nats-py ``PullSubscription``, without per-message
    tasks; a drop-in replacement for what FastStream's pull subscribers call."""

    def __init__(self, subscription: Any, parts: PullParts) -> None:
        self._parts = parts
        self._queue: asyncio.Queue[Msg] = parts.queue
        self._nc = parts.client
        self._next_subject = parts.next_subject
        self._deliver = parts.deliver_subject
        self._original_fetch = subscription.fetch
        self._original_unsubscribe = subscription.unsubscribe
        # Messages asked for by requests that have not ended, and when the last one ends.
        self._ledger = PullLedger(parts.client)
        # The largest batch asked for (the subscriber's batch size), and whether the last
        # message handed out said the consumer had nothing more pending on the server.
        self._batch_size = 0
        self._caught_up = False

    @staticmethod
    def installed(subscription: Any) -> BatchFetcher | None:
        """The fetcher installed on ``subscription``, if any."""
        fetch = getattr(subscription, "fetch", None)
        return fetch.fetcher if isinstance(fetch, _Fetch) else None

    @classmethod
    def install(cls, subscription: Any) -> BatchFetcher | None:
        """Use a fetcher for ``subscription``; None (and nothing changed) when the
        subscription is not a nats-py pull subscription as this module knows it."""
        existing = cls.installed(subscription)
        if existing is not None:
            return existing
        try:
            parts = pull_parts(subscription)
        except HostVersionError as exc:
            logger.warning("%s: nats-py's own fetch stays in use", exc)
            return None
        fetcher = cls(subscription, parts)
        subscription.fetch = _Fetch(fetcher)
        subscription.unsubscribe = fetcher.unsubscribe
        return fetcher

    async def fetch(
        self, batch: int = 1, timeout: float | None = 5.0, heartbeat: float | None = None
    ) -> list[Msg]:
        """Up to ``batch`` messages; raises nats-py's ``TimeoutError`` if none came in time."""
        if heartbeat is not None:  # not used by FastStream; nats-py knows how
            return await self._original_fetch(batch, timeout, heartbeat)  # type: ignore[no-any-return]
        if self._nc.is_closed:
            raise ConnectionClosedError
        messages = self._take(batch)
        if messages:
            return self._handed_out(messages)
        if batch < self._batch_size and self._caught_up:
            # FastStream asks for the rest of a batch it has begun, but the server has
            # nothing more: end the wait now (as nats-py's no_wait request does), so the
            # batch is handled without idling for the rest of ``max_wait``.
            raise NatsTimeoutError
        self._batch_size = max(self._batch_size, batch)
        try:
            await self._fill(messages, batch, timeout)
        except asyncio.CancelledError:  # the subscriber stops: what was collected goes back
            await self._hand_back(messages)
            raise
        if messages:
            return self._handed_out(messages)
        if self._nc.is_closed:
            raise ConnectionClosedError
        raise NatsTimeoutError

    async def _fill(self, messages: list[Msg], batch: int, timeout: float | None) -> None:
        """Add to ``messages`` until the batch is full, the server has nothing more pending,
        or the time is up."""
        started = time.monotonic()
        while not messages or (
            len(messages) < batch and timeout is not None and not _drained(messages[-1])
        ):
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                break
            await self._request(batch - len(messages), remaining)
            # Refused a moment ago (nothing was asked): wait for the pause, then ask again.
            paused = not self._ledger.outstanding
            wait = remaining
            if paused:
                pause = self._ledger.pause_left()
                wait = pause if wait is None else min(wait, pause)
            try:
                # Not wait_for: on Python 3.11 it swallows a cancel that comes as the message
                # does, and the stopping subscriber's fetch would run on to its timeout.
                async with asyncio.timeout(wait):
                    msg = await self._queue.get()
            except TimeoutError:
                if paused:
                    continue  # the loop's test ends it if the time is up
                break
            self._took(msg)
            if self._ledger.is_message(msg):
                messages.append(msg)
            messages.extend(self._take(batch - len(messages)))

    async def unsubscribe(self) -> None:
        """Close the subscription, then NAK what arrived for it and was never handed out."""
        await self._original_unsubscribe()
        await self._hand_back(self._take(self._queue.qsize()))

    @staticmethod
    async def _hand_back(messages: list[Msg]) -> None:
        """NAK messages that will not be handled here, so they are redelivered at once."""
        for msg in messages:
            try:
                await msg.nak()
            except Exception:  # the server redelivers it after ack_wait anyway
                logger.debug("could not NAK a prefetched message on close", exc_info=True)
                break

    def _handed_out(self, messages: list[Msg]) -> list[Msg]:
        self._caught_up = _drained(messages[-1])
        return messages

    async def _request(self, batch: int, timeout: float | None) -> None:
        """Ask the server for what ``batch`` needs beyond the requests still running."""
        ledger = self._ledger
        ledger.lapse_expired()
        needed = batch - ledger.outstanding
        if needed <= 0 or not ledger.can_request():
            return
        expires = max(_DEFAULT_EXPIRES if timeout is None else timeout, _MIN_EXPIRES)
        request = {"batch": needed, "expires": int(expires * 1_000_000_000)}
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), self._deliver)
        ledger.asked(needed, expires)

    def _take(self, limit: int) -> list[Msg]:
        """Up to ``limit`` messages that have already arrived, without waiting."""
        queue = self._queue
        taken: list[Msg] = []
        while len(taken) < limit and not queue.empty():
            msg = queue.get_nowait()
            self._took(msg)
            if self._ledger.is_message(msg):
                taken.append(msg)
        return taken

    def _took(self, msg: Msg) -> None:
        took_from_queue(self._parts, msg)


def _drained(msg: Msg) -> bool:
    """Whether ``msg`` said its consumer had nothing more pending on the server."""
    try:
        return bool(msg.metadata.num_pending == 0)
    except Exception:  # noqa: BLE001 - not a JetStream reply subject: keep waiting as asked
        return False


class _Fetch:
    """The installed ``fetch``; marks a subscription as already handled."""

    __slots__ = ("fetcher",)

    def __init__(self, fetcher: BatchFetcher) -> None:
        self.fetcher = fetcher

    async def __call__(
        self, batch: int = 1, timeout: float | None = 5.0, heartbeat: float | None = None
    ) -> list[Msg]:
        return await self.fetcher.fetch(batch, timeout, heartbeat)
