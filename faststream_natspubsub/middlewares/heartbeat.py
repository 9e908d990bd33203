"""Keeps a slow handler's message from being redelivered while it still runs.

JetStream redelivers a message whose ack has not arrived within the consumer's ``ack_wait``.
While a handler runs, this middleware sends "in progress" (``+WPI``), which restarts that
timer, every third of ``ack_wait``: well inside the 2/3 bound, even on a loaded machine.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from ..compat import current_subscriber, subscriber_ack_wait
from ._delegate import ConsumeDelegate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.message import StreamMessage

__all__ = ("AckHeartbeatMiddleware", "Beat")

logger = logging.getLogger("faststream_natspubsub.heartbeat")

# The server's default ack_wait: what applies to a consumer created without one.
DEFAULT_ACK_WAIT: Final = 30.0


class AckHeartbeatMiddleware:
    """Marks JetStream messages in progress while their handler runs.

    One timer serves every message in flight (a timer per message costs more than a fast
    handler): it wakes every half interval and beats the messages that are due, so a beat
    is at most half an interval late, still within 2/3 of ``ack_wait``.
    """

    def __init__(self, *, fraction: float = 1 / 3, on_beat: Callable[[], None] | None = None):
        if not 0 < fraction <= 2 / 3:
            raise ValueError("fraction must be in (0, 2/3]")
        self.fraction = fraction
        self.on_beat = on_beat
        # id(raw message) -> [message, when its next beat is due, interval]
        self._inflight: dict[int, list[Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tick = float("inf")
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> ConsumeDelegate:
        return ConsumeDelegate(msg, context=context, config=self)

    async def consume(
        self,
        context: ContextRepo,
        msg: StreamMessage[Any],
        call_next: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        """Run ``call_next`` with ``msg`` registered for in-progress signals.

        Composed by hand, the interval comes from the subscriber's consumer config.
        """
        ack_wait = subscriber_ack_wait(current_subscriber(context)) or DEFAULT_ACK_WAIT
        token = self.start(msg.raw_message, ack_wait * self.fraction)
        try:
            return await call_next(msg)
        finally:
            self.finish(token)

    def start(self, raw: Any, interval: float) -> int | None:
        """Register a JetStream message whose handler starts now, to be marked in progress
        every ``interval`` seconds; returns its token."""
        reply = getattr(raw, "reply", "")
        if not (isinstance(reply, str) and reply.startswith("$JS.ACK.")):
            return None
        loop = asyncio.get_running_loop()
        key = id(raw)
        self._inflight[key] = [raw, loop.time() + interval, interval]
        if interval / 2 < self._tick or self._timer is None:
            self._arm(loop, min(self._tick, interval / 2))
        return key

    def finish(self, token: int | None) -> None:
        """The handler of the message registered under ``token`` is done."""
        if token is not None:
            self._inflight.pop(token, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, tick: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._tick = tick
        self._timer = loop.call_later(tick, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for entry in self._inflight.values():
            if entry[1] <= now:
                entry[1] = now + entry[2]
                task = loop.create_task(self._beat(entry[0]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if self._inflight:
            self._timer = loop.call_later(self._tick, self._sweep, loop)
        else:
            self._tick = float("inf")

    async def _beat(self, raw: Any) -> None:
        if raw.is_acked:
            return
        try:
            await raw.in_progress()
        except Exception as exc:  # noqa: BLE001 - a missed beat must not fail the handler
            logger.debug("in-progress signal failed: %r", exc)
        else:
            if self.on_beat is not None:
                self.on_beat()


class Beat:
    """A timer callback, not a task per message: cheap when handlers are fast.

    ``raw`` is anything with an async ``in_progress()``: a message, or a whole batch.
    """

    __slots__ = ("_config", "_handle", "_interval", "_loop", "_raw", "_tasks")

    def __init__(self, raw: Any, interval: float, config: AckHeartbeatMiddleware) -> None:
        self._raw = raw
        self._interval = interval
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(interval, self._fire)

    def _fire(self) -> None:
        task = self._loop.create_task(self._send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._handle = self._loop.call_later(self._interval, self._fire)

    async def _send(self) -> None:
        try:
            await self._raw.in_progress()
        except Exception as exc:  # noqa: BLE001 - a missed beat must not fail the handler
            logger.debug("in-progress signal failed: %r", exc)
        else:
            if self._config.on_beat is not None:
                self._config.on_beat()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
