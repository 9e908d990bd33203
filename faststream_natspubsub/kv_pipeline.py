"""KV writes without a round trip each: the inbox's claims and marks, pipelined.

nats-py's ``KeyValue.create``/``put`` are JetStream publishes made as requests: each waits
for its own reply, through a future, a timer and a JSON parse (about 60 µs of client time
here), one after the other when a handler awaits them. :class:`KvWriter` sends the same
publishes (``$KV.<bucket>.<key>``, with ``Nats-Expected-Last-Subject-Sequence: 0`` for a
create) as protocol lines, many in one write, and routes the server's answers through one
reply subscription into a :class:`KvBatch` per write, which wakes its caller once, when the
last answer is in: claims for a batch, or for messages fetched ahead, travel together.

A write the server refuses for lack of permission gets no answer, only a violation on the
connection: with the connection's :class:`~.violations.PermissionWatch`, the operations it
refuses fail at once with :class:`~.errors.PermissionDeniedError` instead of timing out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyWrongLastSequenceError, NoStreamResponseError
from pydantic_core import from_json

from .compat import api_error, subscribe_direct, write_protocol

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from .violations import PermissionWatch, Violation

__all__ = ("KvBatch", "KvWriter")

logger = logging.getLogger("faststream_natspubsub.kv_pipeline")

# How long a write waits for the server's answer (nats-py's default request timeout).
DEFAULT_TIMEOUT: Final = 5.0
# Writes still unanswered are looked at this often, to fail those past their timeout.
_SWEEP_EVERY: Final = 0.5
_CREATE_HEADERS: Final = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 0\r\n\r\n"
_DELETE_HEADERS: Final = b"NATS/1.0\r\nKV-Operation: DEL\r\n\r\n"
# The server's error codes for "the key's last sequence is not what was expected".
_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
_NO_RESPONDERS: Final = "503"


class KvBatch:
    """The answers to the operations of one write: a revision or an error each.

    ``done`` completes once every operation is answered (or timed out): one wake-up for
    the whole batch, not one per operation.
    """

    __slots__ = ("_outcomes", "_remaining", "done")

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self._outcomes: list[int | BaseException | None] = [None] * size
        self._remaining = size
        self.done: asyncio.Future[None] = loop.create_future()
        if size == 0:
            self.done.set_result(None)

    def __len__(self) -> int:
        return len(self._outcomes)

    async def wait(self) -> None:
        """Until every operation is answered."""
        await self.done

    def error(self, index: int) -> BaseException | None:
        """What operation ``index`` failed with; None if it was stored (or is unanswered)."""
        outcome = self._outcomes[index]
        return outcome if isinstance(outcome, BaseException) else None

    def errors(self) -> list[BaseException | None]:
        """:meth:`error` of every operation."""
        return [o if isinstance(o, BaseException) else None for o in self._outcomes]

    def _settle(self, index: int, outcome: int | BaseException) -> None:
        if self._outcomes[index] is not None:
            return
        self._outcomes[index] = outcome
        self._remaining -= 1
        if self._remaining <= 0 and not self.done.done():
            self.done.set_result(None)


class KvWriter:
    """Pipelined ``put``, ``create`` and ``delete`` on one bucket, over one connection."""

    def __init__(
        self,
        client: Client,
        subject_prefix: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        watch: PermissionWatch | None = None,
        bucket: str = "",
    ) -> None:
        self.client = client
        self.subject_prefix = subject_prefix
        """``$KV.<bucket>.``: a key's subject is this plus the key."""
        self.timeout = timeout
        self._inbox = ""
        self._subscription: Any = None
        self._next_token = 0
        # token -> the batch, the operation's index in it, its deadline, its key.
        self._waiting: dict[str, tuple[KvBatch, int, float, str]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._watch = watch
        self._bucket = bucket
        self._refused_prefix = subject_prefix.lower()
        if watch is not None:
            watch.add_listener(self._on_violation)

    def close(self) -> None:
        """Stop listening for violations (the store binds a new writer on its next start)."""
        if self._watch is not None:
            self._watch.remove_listener(self._on_violation)

    async def create(self, keys: Sequence[str], value: bytes) -> KvBatch:
        """Write ``value`` under each key that does not exist yet, in one write.

        An operation fails with ``KeyWrongLastSequenceError`` when its key exists (or has a
        delete marker), or with the error the server or the timeout gave.
        """
        return await self._send(keys, value, _CREATE_HEADERS)

    async def put(self, keys: Sequence[str], value: bytes) -> KvBatch:
        """Write ``value`` under each key, in one write."""
        return await self._send(keys, value, None)

    async def delete(self, keys: Sequence[str]) -> KvBatch:
        """Delete each key (a delete marker, as ``KeyValue.delete``), in one write."""
        return await self._send(keys, b"", _DELETE_HEADERS)

    async def _send(self, keys: Sequence[str], value: bytes, headers: bytes | None) -> KvBatch:
        await self._subscribe()
        loop = asyncio.get_running_loop()
        batch = KvBatch(len(keys), loop)
        if not keys:
            return batch
        deadline = loop.time() + self.timeout
        frames: list[bytes] = []
        inbox = self._inbox.encode()
        prefix = self.subject_prefix.encode()
        waiting = self._waiting
        for index, key in enumerate(keys):
            token = str(self._next_token)
            self._next_token += 1
            subject = prefix + key.encode()
            reply = b"%s.%s" % (inbox, token.encode())
            if headers is None:
                frames.append(b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, len(value), value))
            else:
                frames.append(
                    b"HPUB %s %s %d %d\r\n%s%s\r\n"
                    % (subject, reply, len(headers), len(headers) + len(value), headers, value)
                )
            waiting[token] = (batch, index, deadline, key)
        await write_protocol(self.client, b"".join(frames))
        if self._sweep is None:
            self._sweep = loop.call_later(_SWEEP_EVERY, self._on_sweep, loop)
        return batch

    async def _subscribe(self) -> None:
        if self._subscription is None:
            self._inbox = self.client.new_inbox()
            self._subscription = await subscribe_direct(
                self.client, self._inbox + ".*", self._on_reply
            )

    def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._inbox) + 1 :], None)
        if waiting is None:  # it timed out before
            return
        batch, index, _, _ = waiting
        try:
            outcome: int | BaseException = _revision(msg)
        except Exception as exc:  # noqa: BLE001 - an error answer fails its own operation only
            outcome = exc
        batch._settle(index, outcome)

    def _on_violation(self, violation: Violation) -> None:
        """Fail at once the operations a permission violation refuses (all of them when the
        answers' inbox is refused)."""
        watch = self._watch
        assert watch is not None
        every = watch.replies_refused(violation)
        refused = violation.action == "publish" and violation.subject.startswith(
            self._refused_prefix
        )
        if not every and not refused:
            return
        for token, (batch, index, _, key) in list(self._waiting.items()):
            if every or violation.subject == (self._refused_prefix + key.lower()):
                del self._waiting[token]
                name = watch.named(violation) if every else f"$KV.{self._bucket}.{key}"
                batch._settle(index, violation.error(name))

    def _on_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for token, (batch, index, deadline, _) in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[token]
                batch._settle(index, NatsTimeoutError())
        self._sweep = loop.call_later(_SWEEP_EVERY, self._on_sweep, loop) if self._waiting else None


def _revision(msg: Msg) -> int:
    """The stored revision from a PubAck; the server's error as an exception."""
    if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
        raise NoStreamResponseError
    reply = from_json(msg.data)
    error = reply.get("error")
    if error is not None:
        if error.get("err_code") in _WRONG_LAST_SEQUENCE:
            raise KeyWrongLastSequenceError(description=error.get("description"))
        raise api_error(error)
    return int(reply["seq"])
