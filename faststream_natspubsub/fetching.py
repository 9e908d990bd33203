"""Pull requests kept ahead of the handlers, sized by how fast the handlers go.

:class:`FetchWindow` decides how many messages a subscriber may hold in the client: its
workers, plus what they can get through in about a second at their measured pace (never
more than :data:`MAX_PREFETCH`). A fast handler gets a deep window, so pull round trips
hide behind handling; a slow one gets a shallow one, so it does not sit on work that another
instance of the app could do, and what it holds starts well within ``ack_wait``.

:class:`PullSource` sends the pull requests that fill that window and takes what arrives
from nats-py's queue without nats-py's per-message task and timer. The server's status
messages are read by a :class:`~faststream_natspubsub.pull_requests.PullLedger` (a refused
request holds the next one back for a moment; no status raises or loses what came with it),
and on close it stops the server's deliveries and returns everything that arrived, so nothing
is left to wait for ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from .compat import PullParts, stop_interest, took_from_queue
from .pull_requests import PullLedger

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ("MAX_PREFETCH", "REQUEST_EXPIRES", "FetchWindow", "PullSource", "request_expiry")

logger = logging.getLogger("faststream_natspubsub.fetching")

# At most this many messages wait in the client beyond the running ones: the batch size a
# hand-tuned subscriber uses, and far below the consumer's max_ack_pending (1000).
MAX_PREFETCH: Final = 256
# Before the first handler finishes the pace is unknown: start with a few and grow.
_INITIAL_PREFETCH: Final = 8
# Work fetched ahead is bounded by this many seconds of the handlers' measured pace, and by
# this share of ack_wait: enough to hide pull round trips many times over, little enough
# that a second instance of the app finds work at once and a waiting message starts long
# before its ack_wait (it is also kept alive with +WPI, in case a handler slows down).
_FETCH_AHEAD_SECONDS: Final = 1.0
_FETCH_AHEAD_SHARE_OF_ACK_WAIT: Final = 0.1
# Weight of the newest handling time in the moving average of the pace.
_PACE_WEIGHT: Final = 0.1

# How long a pull request waits on the server for messages: 5 s, and less than half of
# ack_wait. A process that dies leaves its requests waiting on the server until they expire,
# and while one waits the server looks for messages to deliver, including those of the dead
# process once their ack_wait ran out: for one that has used up max_deliver it emits the
# MAX_DELIVERIES advisory then, when possibly no process of the app is there to hear it.
# Expired before that, the advisory comes with the next live process's first request.
REQUEST_EXPIRES: Final = 5.0
_REQUEST_EXPIRES_SHARE_OF_ACK_WAIT: Final = 0.4


def request_expiry(ack_wait: float) -> float:
    """How long the pull requests of a consumer with this ``ack_wait`` wait on the server."""
    return max(min(REQUEST_EXPIRES, ack_wait * _REQUEST_EXPIRES_SHARE_OF_ACK_WAIT), 0.05)


class FetchWindow:
    """How many messages one subscriber keeps delivered to it: running plus waiting."""

    def __init__(
        self,
        *,
        workers: int,
        ack_wait: float,
        max_prefetch: int = MAX_PREFETCH,
        seconds_ahead: float = _FETCH_AHEAD_SECONDS,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        self.max_prefetch = max(1, max_prefetch)
        self.horizon = min(seconds_ahead, ack_wait * _FETCH_AHEAD_SHARE_OF_ACK_WAIT)
        self.service_time: float | None = None
        """Moving average of one handler call, in seconds (None before the first)."""
        self.prefetch = min(self.max_prefetch, _INITIAL_PREFETCH)
        """Messages to hold beyond the running ones."""
        self.size = workers + self.prefetch
        """Messages the subscriber may hold: one per worker plus the prefetch."""
        self.refill_threshold = max(1, self.size // 2)
        """Ask for more once at least this many places are free (half the window)."""

    def handled(self, seconds: float) -> None:
        """One handler call took ``seconds``."""
        if self.service_time is None:
            self.service_time = seconds
        else:
            self.service_time += _PACE_WEIGHT * (seconds - self.service_time)
        rate = self.workers / max(self.service_time, 1e-6)
        self.prefetch = max(1, min(self.max_prefetch, math.ceil(rate * self.horizon)))
        self.size = self.workers + self.prefetch
        self.refill_threshold = max(1, self.size // 2)


class PullSource:
    """Pull requests and arrivals of one nats-py pull subscription."""

    def __init__(
        self,
        parts: PullParts,
        *,
        expires: float = REQUEST_EXPIRES,
        consumer_info: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.parts = parts
        self.expires = expires
        self._consumer_info = consumer_info
        # The wait for the next arrival: a task of its own, so that a message it has taken
        # from the queue is never lost between the wait's end and its caller's turn.
        self._getter: asyncio.Task[Msg] | None = None
        self.ledger = PullLedger(parts.client)
        self._closed = False

    @property
    def outstanding(self) -> int:
        """Messages asked for by requests that have not ended."""
        return self.ledger.outstanding

    @outstanding.setter
    def outstanding(self, count: int) -> None:
        self.ledger.outstanding = count

    @property
    def arrived(self) -> int:
        """Messages (and status lines) received and not taken yet."""
        return self.parts.queue.qsize()

    def can_request(self) -> bool:
        """False for a short while after the server refused a request."""
        return self.ledger.can_request()

    def lapse_expired(self) -> None:
        """Forget requests that expired or did not survive a reconnect."""
        self.ledger.lapse_expired()

    async def request(self, count: int) -> None:
        """Ask the server for ``count`` more messages."""
        if count <= 0 or self.parts.client.is_closed:
            return
        self.ledger.asked(count, self.expires)
        body = {"batch": count, "expires": int(self.expires * 1_000_000_000)}
        parts = self.parts
        await parts.client.publish(
            parts.next_subject, json.dumps(body).encode(), parts.deliver_subject
        )

    def take(self, limit: int | None = None) -> list[Msg]:
        """Messages that have arrived, without waiting (status lines are consumed)."""
        queue = self.parts.queue
        taken = self._from_getter()  # it holds the earliest of them
        while not queue.empty() and (limit is None or len(taken) < limit):
            msg = queue.get_nowait()
            took_from_queue(self.parts, msg)
            if self.ledger.is_message(msg):
                taken.append(msg)
        return taken

    async def wait(self, timeout: float) -> list[Msg]:
        """What has arrived; waits up to ``timeout`` for the first message or status."""
        taken = self.take()
        if taken or timeout <= 0:
            return taken
        if self._getter is None:
            self._getter = asyncio.get_running_loop().create_task(self.parts.queue.get())
        await asyncio.wait({self._getter}, timeout=timeout)
        return self.take()

    def _from_getter(self) -> list[Msg]:
        getter = self._getter
        if getter is None or not getter.done():
            return []
        self._getter = None
        if getter.cancelled() or getter.exception() is not None:
            return []
        msg = getter.result()
        took_from_queue(self.parts, msg)
        return [msg] if self.ledger.is_message(msg) else []

    def until_expiry(self) -> float:
        """Seconds until the running requests expire (at least a little)."""
        return max(self.ledger.expires_at - time.monotonic(), 0.05)

    async def close(self) -> list[Msg]:
        """Stop the server's deliveries; everything that arrived and was not taken.

        Once the server has seen the ``UNSUB``, it drops this inbox's pull requests: a
        message handed back (NAKed) after that cannot come back here.
        """
        self.outstanding = 0
        if not self._closed and not self.parts.client.is_closed:
            self._closed = True
            try:
                await stop_interest(self.parts)
                # The server keeps a request of a gone inbox in its queue until it looks at
                # the queue again; a NAK meeting such a request loses its message's turn
                # (it then waits for ack_wait). Reading the consumer makes it look.
                if self._consumer_info is not None:
                    await self._consumer_info()
            except Exception:  # closing: hand back what is here anyway
                logger.debug("could not stop the pull inbox's interest", exc_info=True)
        taken = self.take()
        if self._getter is not None:  # nothing more comes: the wait is over
            self._getter.cancel()
            self._getter = None
        return taken
