"""Fetch ahead and keep ``max_workers`` handlers busy: in stream order, or in order per key.

A facade subscriber without its own ``pull_sub`` (and not in batch mode) runs this in place
of FastStream's pull loop, installed by the app's lifecycle before the broker starts its
subscribers. One task keeps pull requests ahead of the handlers (see :mod:`.fetching`) and places
what arrives; ``max_workers`` tasks take the messages in turn and run FastStream's handling
of each (middlewares, handler, acknowledgement) through the subscriber's ``consume``.

- **One worker** (the default) handles messages one at a time in the order they came:
  stream order, as before, while the next ones are already fetched.
- **``order_by``**: messages with the same key are handled one at a time in the order they
  came, messages with different keys in parallel. A message of a key that is NAKed (a retry)
  *holds its key*: the key's later messages wait in the client until the retried one has
  come back and been handled (acknowledged, dead-lettered, or retried again), or until the
  hold runs out (its NAK delay plus ``ack_wait``). A retry back before its handler ended (a
  handler that NAKs by hand and goes on) runs next. Held messages are kept alive with
  ``+WPI`` and do not count against the fetch window, but they do count against the
  consumer's ``max_ack_pending`` on the server.
- **Waiting messages stay alive**: a message fetched but not started gets ``+WPI`` every
  third of ``ack_wait``, so a handler slower than expected never lets one be redelivered
  while it waits here.
- **A graceful stop hands back at once** what was fetched and not started (NAK, in stream
  order; for a held key its retried message first), keeps NAKing what still arrives, and
  lets the running handlers finish; a key whose message is still running hands back its
  later messages when that one ends. Handlers that outlive ``graceful_timeout`` are cancelled
  and their messages NAKed too.
- **A circuit breaker** (:mod:`.breaker`), when the subscriber has one: while it is open
  no handler starts and nothing is fetched (running handlers finish); a failed delivery it
  holds goes to the back of the waiting messages (for an ordered subscriber it keeps its
  key's place) without a NAK, kept alive like the others, and runs again later; once the
  cooldown ends one message (the probe) starts, and fetching resumes when the breaker closes.
  A stop hands held messages back with the others.
- **After a restart** an ordered subscriber first waits (up to ``recovery_timeout``) until
  the messages the consumer had pending when it started have come back: the events of a
  previous run's retries and of a crash are then handled before the later events of their
  keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from .breaker import BreakerState
from .compat import (
    mark_settled,
    pull_parts,
    record_naks,
    replace_pull_loop,
    stop_recording_naks,
    wrap_stop,
    write_protocol,
)
from .fetching import MAX_PREFETCH, FetchWindow, PullSource, request_expiry

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from .breaker import SubscriberBreaker
    from .ordering import KeyOf
    from .retry import RetryPolicy

__all__ = (
    "DispatchHooks",
    "DispatchSettings",
    "Dispatcher",
    "dispatch_settings",
    "stream_sequence",
)

logger = logging.getLogger("faststream_natspubsub.dispatch")

# A CPU-bound handler never suspends; let the client read and write this often.
_YIELD_EVERY: Final = 16
# When nothing is asked for (the window is full), look again after this long.
_IDLE_WAIT: Final = 1.0
# After an unexpected error from the server's answers, wait this long before going on.
_ERROR_PAUSE: Final = 0.5
# A held key waits for its retried message this long beyond the NAK delay and ack_wait.
_HOLD_MARGIN: Final = 1.0
# Waiting messages get +WPI this often, as a share of ack_wait (as the handlers' heartbeat).
_BEAT_SHARE: Final = 1 / 3
# Recovery at start waits this long beyond the longest a pending message takes to return.
_RECOVERY_MARGIN: Final = 2.0
_NAK: Final = b"-NAK"
_WPI: Final = b"+WPI"


class DispatchHooks(Protocol):
    """What another concern (the inbox's claims ahead) may do around the dispatch."""

    async def fetched(self, msgs: Sequence[Msg]) -> None:
        """Messages arrived; none of them has started yet."""

    async def unstarted(self, msgs: Sequence[Msg]) -> None:
        """These messages are handed back unstarted (a NAK follows)."""

    async def stopped(self) -> None:
        """The subscriber has stopped: its handlers have finished."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchSettings:
    """How one subscriber fetches and dispatches; all per-subscriber values are here."""

    max_workers: int = 1
    """Handlers running at once."""
    ack_wait: float = 30.0
    """The consumer's ``ack_wait``, seconds."""
    order_by: KeyOf | None = None
    """The ordering key of a message; None: no order beyond one worker's stream order."""
    recovery_timeout: float = 90.0
    """With ``order_by``: the longest wait, at start, for messages pending from before."""
    max_prefetch: int = MAX_PREFETCH
    """Messages fetched ahead of the handlers at most."""
    hooks: DispatchHooks | None = None
    breaker: SubscriberBreaker | None = None
    """The subscriber's circuit breaker; None: off."""

    def __post_init__(self) -> None:
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if self.ack_wait <= 0:
            raise ValueError("ack_wait must be positive")


class Dispatcher:
    """The fetch-ahead dispatch of one FastStream pull subscriber."""

    def __init__(self, settings: DispatchSettings) -> None:
        self.settings = settings
        self.current: _Run | None = None
        """The running dispatch, between the subscriber's start and stop."""

    @classmethod
    def install(cls, subscriber: Any, settings: DispatchSettings) -> Dispatcher:
        """Run ``subscriber``'s messages through a new dispatcher once it starts."""
        dispatcher = cls(settings)
        replace_pull_loop(subscriber, lambda consume: dispatcher.run(subscriber, consume))
        wrap_stop(subscriber, before=dispatcher.stopping, after=dispatcher.stopped)
        return dispatcher

    async def run(self, subscriber: Any, consume: Callable[[Msg], Awaitable[Any]]) -> None:
        """The subscriber's consuming task: until it is cancelled by the subscriber's stop."""
        subscription = subscriber.subscription
        run = _Run(self.settings, pull_parts(subscription), consume, subscription.consumer_info)
        self.current = run
        original_unsubscribe = subscription.unsubscribe

        async def unsubscribe() -> None:
            await run.close()
            await original_unsubscribe()

        subscription.unsubscribe = unsubscribe
        try:
            if self.settings.order_by is not None:
                await run.start_recovery(subscription)
            await run.serve()
        finally:
            if self.current is run:
                self.current = None

    async def stopping(self) -> None:
        """The subscriber begins to stop: hand back what has not started."""
        if self.current is not None:
            await self.current.begin_closing()

    async def stopped(self) -> None:
        """The subscriber has stopped."""
        hooks = self.settings.hooks
        if hooks is not None:
            await hooks.stopped()


def stream_sequence(msg: Msg) -> int:
    """The stream sequence from a JetStream reply subject (0 when it is not one).

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...`` (9 tokens) or, with a domain and
    account hash, ``$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>...``.
    """
    reply = msg.reply
    if not reply or not reply.startswith("$JS.ACK."):
        return 0
    tokens = reply.split(".")
    index = 5 if len(tokens) == 9 else 7
    try:
        return int(tokens[index])
    except (IndexError, ValueError):
        return 0


class _Item:
    """One message from arrival to its handler's end."""

    __slots__ = ("_seq", "beat_due", "key", "msg", "nak_delay", "naked", "probe", "started")

    def __init__(self, msg: Msg, beat_due: float) -> None:
        self.msg = msg
        self._seq = -1
        self.key: Hashable = None
        self.beat_due = beat_due
        self.started = False
        self.naked = False
        self.nak_delay: float | None = None
        self.probe = False

    @property
    def seq(self) -> int:
        """The stream sequence (read from the reply subject only when needed)."""
        if self._seq < 0:
            self._seq = stream_sequence(self.msg)
        return self._seq

    def on_nak(self, delay: float | None) -> None:
        self.naked = True
        self.nak_delay = delay


class _Lane:
    """The messages of one key: the one running (or ready), and those waiting behind it."""

    __slots__ = ("active", "blocker", "hold_until", "queue")

    def __init__(self, active: _Item | None) -> None:
        self.active = active
        self.blocker: _Item | None = None
        self.hold_until = 0.0
        self.queue: deque[_Item] = deque()


class _Recovery:
    """At start: the consumer's pending messages, to be seen before anything is handled."""

    __slots__ = ("buffer", "deadline", "expected", "floor", "seen")

    def __init__(self, *, expected: int, floor: int, deadline: float) -> None:
        self.expected = expected
        self.floor = floor
        self.deadline = deadline
        self.seen: set[int] = set()
        self.buffer: list[_Item] = []


class _Run:
    """One run of a dispatcher, from the subscriber's start to its stop."""

    def __init__(
        self,
        settings: DispatchSettings,
        parts: Any,
        consume: Callable[[Msg], Awaitable[Any]],
        consumer_info: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.client: Client = parts.client
        self.source = PullSource(
            parts, expires=request_expiry(settings.ack_wait), consumer_info=consumer_info
        )
        self.window = FetchWindow(
            workers=settings.max_workers,
            ack_wait=settings.ack_wait,
            max_prefetch=settings.max_prefetch,
        )
        self.consume = consume
        self.order_by = settings.order_by
        self.hooks = settings.hooks
        self.beat_interval = settings.ack_wait * _BEAT_SHARE
        self.loop = asyncio.get_running_loop()
        self.ready: deque[_Item] = deque()
        self.lanes: dict[Hashable, _Lane] = {}
        self.held_seqs: dict[int, Hashable] = {}
        self.waiting = 0
        """Messages here that may start as soon as a worker (and their key) is free."""
        self.held = 0
        """Messages here that wait for a retried message of their key, or for recovery."""
        self.running = 0
        self.in_flight: set[_Item] = set()
        self.closing = False
        # Arrivals while a stop collects what to hand back: handed back with it, in order.
        self._collecting: list[_Item] | None = None
        # Set while the feeder is not between taking arrivals and placing them.
        self._placed = asyncio.Event()
        self._placed.set()
        self.recovery: _Recovery | None = None
        self._idle: deque[asyncio.Future[None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.breaker = settings.breaker
        self._probe_timer: asyncio.TimerHandle | None = None

    # -- the tasks ------------------------------------------------------------------------

    async def serve(self) -> None:
        workers = [self.loop.create_task(self._work()) for _ in range(self.settings.max_workers)]
        self._sweep = self.loop.call_later(self.beat_interval / 2, self._on_sweep)
        breaker = self.breaker
        if breaker is not None:
            breaker.attach(self._on_breaker)
        try:
            await self._feed()
        finally:
            if breaker is not None:
                breaker.detach()
            if self._probe_timer is not None:
                self._probe_timer.cancel()
            if self._sweep is not None:
                self._sweep.cancel()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._abandon()

    async def _feed(self) -> None:
        source = self.source
        while True:
            await self._refill()
            timeout = source.until_expiry() if source.outstanding else _IDLE_WAIT
            try:
                msgs = await source.wait(timeout)
            except Exception:  # an unexpected status: note it, pause, go on
                logger.warning("unexpected answer to a pull request", exc_info=True)
                await asyncio.sleep(_ERROR_PAUSE)
                continue
            if msgs:
                self._placed.clear()
                try:
                    await self._arrived(msgs)
                finally:
                    self._placed.set()
            elif self.recovery is not None:
                self._check_recovery()

    async def _work(self) -> None:
        since_yield = 0
        while True:
            item = await self._next()
            if item is None:
                return
            item.started = True
            self.waiting -= 1
            self.running += 1
            self.in_flight.add(item)
            started = self.loop.time()
            try:
                await self.consume(item.msg)
            finally:
                self.running -= 1
            self.in_flight.discard(item)  # kept when cancelled: _abandon hands it back
            self.window.handled(self.loop.time() - started)
            if self.breaker is not None and self._after_breaker(item):
                continue
            hand_back = self._finished(item)
            if hand_back:
                await self._nak(hand_back)
            await self._refill()
            since_yield += 1
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)

    async def _next(self) -> _Item | None:
        while True:
            if self.closing:
                return None
            if self.ready:
                if self.breaker is None:
                    return self.ready.popleft()
                machine = self.breaker.machine
                if machine.may_start():
                    item = self.ready.popleft()
                    # Read after may_start: the cooldown may have ended within it, and a start
                    # in half-open is the probe (only a closed breaker starts others).
                    item.probe = machine.state is BreakerState.HALF_OPEN
                    return item
            waiter = self.loop.create_future()
            self._idle.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()

    def _wake(self, count: int) -> None:
        while count > 0 and self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    async def _refill(self) -> None:
        source = self.source
        source.lapse_expired()
        if self.closing or not source.can_request():
            return
        used = self.running + self.waiting + source.outstanding + source.arrived
        room = self.window.size - used
        if self.breaker is not None and self.breaker.machine.state is not BreakerState.CLOSED:
            # Open: nothing. Half-open: one message to probe with, if none is here.
            if self.ready or source.outstanding or not self.breaker.machine.may_fetch():
                return
            room = min(room, 1)
        if room >= self.window.refill_threshold or (room > 0 and source.outstanding == 0):
            try:
                await source.request(room)
            except Exception:  # closed, or the reconnect buffer is full: asked again later
                logger.debug("could not send a pull request", exc_info=True)
                source.outstanding = 0
                return
            await asyncio.sleep(0)  # let the client write it before handling goes on

    # -- the circuit breaker ----------------------------------------------------------------

    def _after_breaker(self, item: _Item) -> bool:
        """A handler ended: settle the probe; True when the breaker held the message (it
        waits again, at the back, without a NAK)."""
        breaker = self.breaker
        assert breaker is not None
        held = breaker.take_held(item.msg)
        if item.probe:
            item.probe = False
            if not held and breaker.machine.state is BreakerState.HALF_OPEN:
                breaker.machine.probe_ended()  # neither verdict: the next one probes
                self._wake(1)
        if not held:
            return False
        item.started = False
        item.beat_due = self.loop.time()  # kept alive from the next sweep on
        self.waiting += 1
        self.ready.append(item)
        return True

    def _on_breaker(self) -> None:
        """The breaker opened or closed."""
        breaker = self.breaker
        assert breaker is not None
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        until = breaker.machine.until_probe()
        if until is None:  # closed: every waiting message may start, fetching resumes
            self._wake(len(self.ready))
            return
        self._probe_timer = self.loop.call_later(until, self._on_probe_due)

    def _on_probe_due(self) -> None:
        self._probe_timer = None
        self._wake(1)

    # -- placing arrivals -----------------------------------------------------------------

    async def _arrived(self, msgs: list[Msg]) -> None:
        due = self.loop.time() + self.beat_interval
        items = [_Item(msg, due) for msg in msgs]
        if self.closing:
            await self._arrived_while_closing(items)
            return
        if self.hooks is not None:
            try:
                await self.hooks.fetched(msgs)
            except Exception:  # claims ahead only save time: the handlers claim anyway
                logger.warning("could not prepare fetched messages", exc_info=True)
            if self.closing:  # it began while the hook ran
                await self._arrived_while_closing(items)
                return
        if self.order_by is None:
            self.ready.extend(items)
            self.waiting += len(items)
            self._wake(len(items))
            return
        for item in items:
            record_naks(item.msg, item.on_nak)
            if self.recovery is not None:
                self._recovering(item)
            else:
                self._place(item)
        self._wake(len(self.ready))

    def _place(self, item: _Item) -> None:
        """Put a message of an ordered subscriber where its key says."""
        # A retried message keeps the key it was held under, whatever its key says now.
        key = self.held_seqs.pop(item.seq, _NO_KEY)
        if key is _NO_KEY:
            key = self.order_by(item.msg) if self.order_by is not None else None
        item.key = key
        lane = self.lanes.get(key)
        if lane is None:
            self.lanes[key] = _Lane(item)
            self.ready.append(item)
            self.waiting += 1
        elif lane.blocker is not None and lane.blocker.seq == item.seq:
            # The retried message is back: it goes first, the key's others behind it.
            lane.blocker = None
            lane.active = item
            self.ready.append(item)
            self.waiting += 1 + len(lane.queue)
            self.held -= len(lane.queue)
        elif _retry_of_running(lane, item):
            # Its handler NAKed it and runs on: the retry is back already, and runs next.
            lane.queue.appendleft(item)
            self.waiting += 1
        else:
            lane.queue.append(item)
            if lane.blocker is None:
                self.waiting += 1
            else:
                self.held += 1

    def _recovering(self, item: _Item) -> None:
        recovery = self.recovery
        assert recovery is not None
        recovery.buffer.append(item)
        self.held += 1
        if 0 < item.seq <= recovery.floor:
            recovery.seen.add(item.seq)
        self._check_recovery()

    def _check_recovery(self) -> None:
        recovery = self.recovery
        if recovery is None:
            return
        seen_all = len(recovery.seen) >= recovery.expected
        if not seen_all and self.loop.time() < recovery.deadline:
            return
        if not seen_all:
            logger.warning(
                "%d of the %d messages pending at start did not come back within the recovery "
                "timeout; handling goes on without them",
                recovery.expected - len(recovery.seen),
                recovery.expected,
            )
        self.recovery = None
        self.held -= len(recovery.buffer)
        for item in sorted(recovery.buffer, key=lambda i: i.seq):
            self._place(item)
        self._wake(len(self.ready))

    async def start_recovery(self, subscription: Any) -> None:
        """Ordered subscribers: wait for what the consumer had pending when this run began."""
        try:
            info = await subscription.consumer_info()
        except Exception:  # no info: nothing to wait for, as on a first start
            logger.warning("could not read the consumer's state at start", exc_info=True)
            return
        pending = int(getattr(info, "num_ack_pending", 0) or 0)
        delivered = getattr(getattr(info, "delivered", None), "stream_seq", 0) or 0
        if pending > 0:
            self.recovery = _Recovery(
                expected=pending,
                floor=int(delivered),
                deadline=self.loop.time() + self.settings.recovery_timeout,
            )

    # -- a handler ended --------------------------------------------------------------------

    def _finished(self, item: _Item) -> list[_Item]:
        """Update the key of a message whose handler ended; what to NAK now (closing)."""
        if self.order_by is None:
            return []
        stop_recording_naks(item.msg)
        lane = self.lanes.get(item.key)
        if lane is None or lane.active is not item:
            return []
        lane.active = None
        # The retry of a message its handler NAKed may be back before the handler ended.
        retry_back = bool(lane.queue) and lane.queue[0].seq == item.seq
        if self.closing:
            del self.lanes[item.key]
            # The retried message goes back first, at once, its key's others behind it.
            hand_back = [item] if item.naked and not retry_back else []
            hand_back.extend(sorted(lane.queue, key=lambda i: i.seq))
            self.waiting -= len(lane.queue)
            return hand_back
        if item.naked and not retry_back:
            lane.blocker = item
            lane.hold_until = (
                self.loop.time() + (item.nak_delay or 0.0) + self.settings.ack_wait + _HOLD_MARGIN
            )
            self.held_seqs[item.seq] = item.key
            self.waiting -= len(lane.queue)
            self.held += len(lane.queue)
        elif lane.queue:
            lane.active = lane.queue.popleft()
            self.ready.append(lane.active)
            self._wake(1)
        else:
            del self.lanes[item.key]
        return []

    # -- timers: +WPI for waiting messages, holds that ran out, recovery deadline ----------

    def _on_sweep(self) -> None:
        now = self.loop.time()
        due = [item for item in self._waiting_items() if item.beat_due <= now]
        for item in due:
            item.beat_due = now + self.beat_interval
        self._end_expired_holds(now)
        self._check_recovery()
        if due and not self.client.is_closed:
            self._spawn(self._write(due, _WPI))
        self._sweep = self.loop.call_later(self.beat_interval / 2, self._on_sweep)

    def _waiting_items(self) -> list[_Item]:
        items = list(self.ready)
        for lane in self.lanes.values():
            items.extend(lane.queue)
        if self.recovery is not None:
            items.extend(self.recovery.buffer)
        return items

    def _end_expired_holds(self, now: float) -> None:
        for key, lane in list(self.lanes.items()):
            blocker = lane.blocker
            if blocker is None or lane.hold_until > now:
                continue
            logger.warning(
                "retried message %d of key %r did not come back in time; the key's later "
                "messages go on without it",
                blocker.seq,
                key,
            )
            self.held_seqs.pop(blocker.seq, None)
            lane.blocker = None
            self.waiting += len(lane.queue)
            self.held -= len(lane.queue)
            if lane.queue:
                lane.active = lane.queue.popleft()
                self.ready.append(lane.active)
                self._wake(1)
            else:
                del self.lanes[key]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- stopping -------------------------------------------------------------------------

    async def begin_closing(self) -> None:
        """Stop fetching and hand back every message not started.

        The server stops delivering to this subscriber first, so nothing handed back can
        come straight back here; a key whose message is running hands back its others when
        that message's handler ends.
        """
        if self.closing:
            return
        self.closing = True
        self._collecting = []
        retried: list[_Item] = []
        unstarted = [item for item in self.ready if not item.started]
        self.ready.clear()
        for key, lane in list(self.lanes.items()):
            if lane.active is not None and lane.active.started:
                continue  # its handler runs: the key's others go back when it ends
            if lane.blocker is not None:
                retried.append(lane.blocker)
            unstarted.extend(lane.queue)
            del self.lanes[key]
        if self.recovery is not None:
            unstarted.extend(self.recovery.buffer)
            self.recovery = None
        self.held_seqs.clear()
        self.waiting = sum(len(lane.queue) for lane in self.lanes.values())
        self.held = 0
        self._wake(len(self._idle))
        drained = [_Item(msg, 0.0) for msg in await self.source.close()]
        await self._placed.wait()  # what the feeder holds joins the rest
        arrived, self._collecting = self._collecting + drained, None
        # One NAK write, in stream order: the server redelivers in this order.
        unstarted.extend(self._behind_running(arrived))
        unstarted.sort(key=lambda i: i.seq)
        await self._nak(retried + unstarted)

    def _behind_running(self, items: list[_Item]) -> list[_Item]:
        """While closing: queue ``items`` behind a running message of their key; the rest."""
        if self.order_by is None:
            return items
        free: list[_Item] = []
        for item in items:
            item.key = self.order_by(item.msg)
            lane = self.lanes.get(item.key)
            if lane is not None:
                lane.queue.append(item)
                self.waiting += 1
            else:
                free.append(item)
        return free

    async def _arrived_while_closing(self, items: list[_Item]) -> None:
        if self._collecting is not None:
            self._collecting.extend(items)
            return
        await self._nak(sorted(self._behind_running(items), key=lambda i: i.seq))

    async def close(self) -> None:
        """The subscription closes (after the running handlers ended or timed out)."""
        await self.begin_closing()
        arrived = await self.source.close()
        if arrived:
            await self._arrived_while_closing([_Item(msg, 0.0) for msg in arrived])

    async def _abandon(self) -> None:
        """The task ends (cancelled after graceful_timeout): hand back everything left."""
        self.closing = True
        # Handlers cancelled mid-way (their messages were not acknowledged), messages ready
        # to start (a breaker may hold them) and those queued behind either: in stream order,
        # as the server redelivers them, so each key's events come back in their order.
        # A retried message its key waits for goes first, its NAK repeated without delay.
        retried = [lane.blocker for lane in self.lanes.values() if lane.blocker is not None]
        left = [item for item in self.in_flight if not item.msg.is_acked]
        for lane in self.lanes.values():
            left.extend(lane.queue)
        left.extend(item for item in self.ready if not item.started)
        if self.recovery is not None:  # ended before a stop began: still waiting to start
            left.extend(self.recovery.buffer)
            self.recovery = None
        left.sort(key=lambda i: i.seq)
        self.in_flight.clear()
        self.lanes.clear()
        self.ready.clear()
        if (retried or left) and not self.client.is_closed:
            with contextlib.suppress(Exception):
                await self._nak(retried + left)

    async def _nak(self, items: Sequence[_Item]) -> None:
        """NAK ``items`` in this order, at once (a NAK sent before is repeated, undelayed)."""
        if not items or self.client.is_closed:
            return
        if self.hooks is not None:
            fresh = [item.msg for item in items if not item.msg.is_acked]
            if fresh:
                try:
                    await self.hooks.unstarted(fresh)
                except Exception:  # handed back anyway; their claims run out on their own
                    logger.warning("could not release messages handed back", exc_info=True)
        await self._write(items, _NAK)
        for item in items:
            if not item.msg.is_acked:
                mark_settled(item.msg)

    async def _write(self, items: Sequence[_Item], word: bytes) -> None:
        lines = b"".join(
            b"PUB %s %d\r\n%s\r\n" % (item.msg.reply.encode(), len(word), word)
            for item in items
            if item.msg.reply
        )
        if not lines:
            return
        try:
            await write_protocol(self.client, lines)
        except Exception:  # the server redelivers after ack_wait anyway
            logger.debug("could not send %s for %d messages", word, len(items), exc_info=True)


_NO_KEY: Final[Any] = object()


def _retry_of_running(lane: _Lane, item: _Item) -> bool:
    """Whether ``item`` is the redelivery of its key's running message, which its handler
    NAKed and has not finished."""
    active = lane.active
    return active is not None and active.started and active.naked and active.seq == item.seq


def dispatch_settings(
    *,
    max_workers: int,
    ack_wait: float,
    order_by: KeyOf | None,
    retry: RetryPolicy,
    hooks: DispatchHooks | None = None,
    breaker: SubscriberBreaker | None = None,
) -> DispatchSettings:
    """The settings of one facade subscriber (``order_by``: see :func:`.ordering.key_function`).

    An ordered subscriber's recovery at start waits at most for the longest a pending
    message can take to come back: ``ack_wait`` (a crashed handler) or the longest retry
    delay of the policy (a delayed NAK), plus a little.
    """
    attempts = range(1, retry.max_attempts + 1)
    longest_delay = max((retry.delay_for(a, rand=lambda: 1.0) for a in attempts), default=0.0)
    return DispatchSettings(
        max_workers=max_workers,
        ack_wait=ack_wait,
        order_by=order_by,
        recovery_timeout=max(ack_wait, longest_delay) + _RECOVERY_MARGIN,
        hooks=hooks,
        breaker=breaker,
    )
