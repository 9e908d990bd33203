"""KV writes without a round trip each: the inbox's claims and marks, pipelined.

nats-py's ``KeyValue.create``/``put`` are JetStream publishes made as requests: each waits
for its own reply, through a future, a timer and a JSON parse (about 60 µs of client time
here), one after the other when a handler awaits them. :class:`KvWriter` sends the same
publishes (``$KV.<bucket>.<key>``, with ``Nats-Expected-Last-Subject-Sequence: 0`` for a
create) as protocol lines, many in one write, and routes the server's answers to a future
per write through one reply subscription. Callers wait for the futures they need, when they
need them: claims for a batch, or for messages fetched ahead, travel together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, KeyWrongLastSequenceError, NoStreamResponseError
from pydantic_core import from_json

from .compat import write_protocol

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = ("KvWriter",)

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


class KvWriter:
    """Pipelined ``put`` and ``create`` on one bucket, over one connection."""

    def __init__(
        self, client: Client, subject_prefix: str, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.client = client
        self.subject_prefix = subject_prefix
        """``$KV.<bucket>.``: a key's subject is this plus the key."""
        self.timeout = timeout
        self._inbox = ""
        self._subscription: Any = None
        self._next_token = 0
        self._waiting: dict[str, tuple[asyncio.Future[int], float]] = {}
        self._sweep: asyncio.TimerHandle | None = None

    async def create(self, keys: Sequence[str], value: bytes) -> list[asyncio.Future[int]]:
        """Write ``value`` under each key that does not exist yet, in one write.

        Each future gives the new revision, or raises ``KeyWrongLastSequenceError`` when the
        key exists (or has a delete marker), or the error the server or the timeout gave.
        """
        return await self._send(keys, value, _CREATE_HEADERS)

    async def put(self, keys: Sequence[str], value: bytes) -> list[asyncio.Future[int]]:
        """Write ``value`` under each key, in one write; each future gives the revision."""
        return await self._send(keys, value, None)

    async def delete(self, keys: Sequence[str]) -> list[asyncio.Future[int]]:
        """Delete each key (a delete marker, as ``KeyValue.delete``), in one write."""
        return await self._send(keys, b"", _DELETE_HEADERS)

    async def _send(
        self, keys: Sequence[str], value: bytes, headers: bytes | None
    ) -> list[asyncio.Future[int]]:
        await self._subscribe()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        futures: list[asyncio.Future[int]] = []
        frames: list[bytes] = []
        inbox = self._inbox.encode()
        for key in keys:
            token = str(self._next_token)
            self._next_token += 1
            subject = (self.subject_prefix + key).encode()
            reply = b"%s.%s" % (inbox, token.encode())
            if headers is None:
                frames.append(b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, len(value), value))
            else:
                frames.append(
                    b"HPUB %s %s %d %d\r\n%s%s\r\n"
                    % (
                        subject,
                        reply,
                        len(headers),
                        len(headers) + len(value),
                        headers,
                        value,
                    )
                )
            future: asyncio.Future[int] = loop.create_future()
            self._waiting[token] = (future, deadline)
            futures.append(future)
        if frames:
            await write_protocol(self.client, b"".join(frames))
            if self._sweep is None:
                self._sweep = loop.call_later(_SWEEP_EVERY, self._on_sweep, loop)
        return futures

    async def _subscribe(self) -> None:
        if self._subscription is None:
            self._inbox = self.client.new_inbox()
            self._subscription = await self.client.subscribe(self._inbox + ".*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._inbox) + 1 :], None)
        if waiting is None:  # it timed out before
            return
        future = waiting[0]
        if future.done():
            return
        try:
            future.set_result(_revision(msg))
        except Exception as exc:  # noqa: BLE001 - an error answer fails its own write only
            future.set_exception(exc)

    def _on_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for token, (future, deadline) in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[token]
                if not future.done():
                    future.set_exception(NatsTimeoutError())
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
        try:
            APIError.from_error(error)
        except APIError as api_error:
            raise api_error from None
        raise APIError(**error)
    return int(reply["seq"])
