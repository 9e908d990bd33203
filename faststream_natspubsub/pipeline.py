"""JetStream publishing with PubAcks routed by token: ``publish_many``'s windows, one write
each, and ``publish``'s single awaited event.

nats-py's ``publish_async`` spends about 20 µs of client time per message here (a semaphore
wait that creates a task, a future with callbacks, a random token, header encoding), which
caps it far below what the server takes. :class:`PubAckRouter` sends the same protocol (one
``HPUB`` with a reply subject per event) for a whole window in one write, and routes the
PubAck replies to their items through one wildcard reply subscription per connection. Its
replies are read where they arrive, without a task wake-up each; for one awaited publish,
that and no request machinery make it cheaper than nats-py's ``JetStreamContext.publish``.

Everything nats-py's ``publish`` refuses is refused here too, per item and without sending
it: a closed or draining connection, an outbound buffer that is full while reconnecting, a
message (headers included) larger than the server's ``max_payload``. Header values lose
CR/LF as in nats-py.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from nats.errors import (
    ConnectionClosedError,
    ConnectionDrainingError,
    OutboundBufferLimitError,
)
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck as NatsPubAck
from nats.js.errors import NoStreamResponseError
from pydantic_core import from_json

from .compat import api_error, flush_pending, outbound_buffer_room, send_raw, subscribe_direct
from .errors import MessageTooLargeError, NatsPubsubError, PublishError
from .publishing import RETRIABLE_PUBLISH_ERRORS

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

__all__ = ("PipelinedItem", "PubAck", "PubAckRouter", "header_block", "header_line", "header_value")

_NO_RESPONDERS: Final = "503"
_HEADER_KEY: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES: Final = str.maketrans({"\r": " ", "\n": " "})


def header_block(headers: Mapping[str, str]) -> bytes:
    """The opening of a NATS header block: ``NATS/1.0`` then a ``Key: Value`` line each.

    The closing blank line is left out, so per-item lines can follow. Keys are checked as
    nats-py checks them; values lose CR/LF as in nats-py.
    """
    return b"".join([b"NATS/1.0\r\n", *(header_line(k, v) for k, v in headers.items())])


def header_line(key: str, value: str) -> bytes:
    """One ``Key: Value`` header line."""
    key = key.strip()
    if not _HEADER_KEY.fullmatch(key):
        raise PublishError(f"invalid header name {key!r}")
    return b"%s: %s\r\n" % (key.encode(), header_value(value))


def header_value(value: str) -> bytes:
    """A header value as nats-py sends it: stripped, CR and LF turned into spaces."""
    value = value.strip()
    if "\r" in value or "\n" in value:
        value = value.translate(_NEWLINES)
    return value.encode()


@dataclass(frozen=True, slots=True)
class PubAck:
    """What the server answered for a stored message (nats-py's ``PubAck``, the fields used)."""

    stream: str
    seq: int
    duplicate: bool = False


class PipelinedItem:
    """One message of a window: what to send, then its PubAck or its error."""

    __slots__ = ("ack", "error", "event_id", "headers", "payload", "retriable", "subject")

    def __init__(self, *, event_id: str, subject: str, payload: bytes, headers: bytes) -> None:
        self.event_id = event_id
        self.subject = subject
        self.payload = payload
        self.headers = headers  # the complete header block
        self.ack: PubAck | None = None
        self.error: BaseException | None = None
        self.retriable = True


class _Round:
    """The items of one window still waiting for their PubAck."""

    __slots__ = ("done", "remaining")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.done = asyncio.Event()
        if remaining == 0:
            self.done.set()

    def settle(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0:
            self.done.set()


class PubAckRouter:
    """Sends windows of JetStream publishes on one connection and collects their PubAcks."""

    def __init__(self, connection: NatsClient) -> None:
        self.connection = connection
        self._prefix = ""
        self._prefix_bytes = b""
        self._subscription: Any = None
        self._next_token = 0
        # A window's items wait on their round; a single publish on its future.
        self._waiting: dict[str, tuple[PipelinedItem, _Round | asyncio.Future[None]]] = {}

    async def publish(
        self, subject: str, headers: bytes, payload: bytes, timeout: float
    ) -> NatsPubAck:
        """One JetStream publish, awaited: what nats-py's ``JetStreamContext.publish`` does.

        ``headers`` is the complete header block. Raises what that call raises, so a caller's
        retry reads it alike: ``nats.errors.TimeoutError`` after ``timeout`` seconds,
        ``NoStreamResponseError`` when no stream listens, the typed ``APIError`` of the
        server's refusal, and nats-py's connection errors; :class:`MessageTooLargeError`
        instead of ``MaxPayloadError``.
        """
        nc = self.connection
        refusal = _connection_refusal(nc)
        if refusal is not None:
            raise refusal
        item = PipelinedItem(event_id="", subject=subject, payload=payload, headers=headers)
        too_large = _too_large(item, nc.max_payload)
        if too_large is not None:
            raise too_large
        await self._subscribe()
        token, frame = self._frame(item)
        if not nc.is_connected and len(frame) > outbound_buffer_room(nc):
            raise OutboundBufferLimitError
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[token] = (item, answered)
        try:
            await send_raw(nc, frame)
            await flush_pending(nc)
            nc.stats["out_msgs"] += 1
            nc.stats["out_bytes"] += len(payload)
            try:
                async with asyncio.timeout(timeout):
                    await answered
            except TimeoutError:
                raise NatsTimeoutError from None
        finally:
            self._waiting.pop(token, None)
        if item.ack is not None:
            ack = item.ack
            return NatsPubAck(stream=ack.stream, seq=ack.seq, duplicate=ack.duplicate)
        error = item.error
        # _fail wraps what is not a package error; the caller reads nats-py's own.
        if isinstance(error, PublishError) and error.__cause__ is not None:
            raise error.__cause__
        raise error or PublishError(f"no PubAck from {subject!r}")

    async def send_round(self, items: Iterable[PipelinedItem], timeout: float) -> None:
        """Send every item at once, then wait up to ``timeout`` for all their PubAcks.

        Each item ends with ``ack`` set, or with ``error`` and ``retriable`` set.
        """
        nc = self.connection
        items = list(items)
        refusal = _connection_refusal(nc)
        if refusal is not None:
            for item in items:
                _fail(item, refusal, retriable=False)
            return
        await self._subscribe()
        frames: list[bytes] = []
        sent: list[PipelinedItem] = []
        tokens: list[str] = []
        size = 0
        max_payload = nc.max_payload
        for item in items:
            too_large = _too_large(item, max_payload)
            if too_large is not None:
                _fail(item, too_large, retriable=False)
                continue
            token, frame = self._frame(item)
            frames.append(frame)
            sent.append(item)
            tokens.append(token)
            size += len(frame)
            item.ack, item.error = None, None
            item.retriable = True
        if not sent:
            return
        if not nc.is_connected and size > outbound_buffer_room(nc):
            for item in sent:  # nowhere to buffer them while reconnecting
                _fail(item, OutboundBufferLimitError(), retriable=True)
            return
        window = _Round(len(sent))
        for token, item in zip(tokens, sent, strict=True):
            self._waiting[token] = (item, window)
        await send_raw(nc, b"".join(frames))
        await flush_pending(nc)
        nc.stats["out_msgs"] += len(sent)
        nc.stats["out_bytes"] += sum(len(item.payload) for item in sent)
        try:
            await asyncio.wait_for(window.done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            for token, item in zip(tokens, sent, strict=True):
                if self._waiting.pop(token, None) is not None:
                    _fail(
                        item,
                        PublishError(f"no PubAck for {item.event_id} within {timeout}s"),
                        retriable=True,
                    )

    def _frame(self, item: PipelinedItem) -> tuple[str, bytes]:
        """A fresh reply token, and the ``HPUB`` frame of ``item`` that asks for it."""
        token = str(self._next_token)
        self._next_token += 1
        frame = b"HPUB %s %s.%s %d %d\r\n%s%s\r\n" % (
            item.subject.encode(),
            self._prefix_bytes,
            token.encode(),
            len(item.headers),
            len(item.headers) + len(item.payload),
            item.headers,
            item.payload,
        )
        return token, frame

    async def _subscribe(self) -> None:
        if self._subscription is None:
            self._prefix = self.connection.new_inbox()
            self._prefix_bytes = self._prefix.encode()
            self._subscription = await subscribe_direct(
                self.connection, self._prefix + ".*", self._on_reply
            )

    def _on_reply(self, msg: Msg) -> None:
        """Called as the reply is read (it must not raise)."""
        waiting = self._waiting.pop(msg.subject[len(self._prefix) + 1 :], None)
        if waiting is None:  # a reply after its window or publish gave up on it
            return
        item, window = waiting
        try:
            if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
                _fail(item, NoStreamResponseError(), retriable=True)
            else:
                reply = from_json(msg.data)
                if "error" in reply:
                    refusal = api_error(reply["error"])
                    retriable = isinstance(refusal, RETRIABLE_PUBLISH_ERRORS)
                    _fail(item, refusal, retriable=retriable)
                else:
                    item.ack = PubAck(reply["stream"], reply["seq"], bool(reply.get("duplicate")))
        except Exception as exc:  # noqa: BLE001 - an unreadable reply fails its item only
            _fail(item, exc, retriable=False)
        finally:
            if isinstance(window, _Round):
                window.settle()
            elif not window.done():
                window.set_result(None)


def _connection_refusal(nc: NatsClient) -> BaseException | None:
    """What nats-py's ``publish`` raises on a closed or draining connection; else None."""
    if nc.is_closed:
        return ConnectionClosedError()
    if nc.is_draining_pubs:
        return ConnectionDrainingError()
    return None


def _too_large(item: PipelinedItem, max_payload: int) -> MessageTooLargeError | None:
    """The error for ``item`` when its headers and body exceed the server's limit."""
    size = len(item.headers) + len(item.payload)
    if size <= max_payload:
        return None
    return MessageTooLargeError(size, max_payload, headers=len(item.headers))


def _fail(item: PipelinedItem, error: BaseException, *, retriable: bool) -> None:
    item.error = error if isinstance(error, NatsPubsubError) else _wrapped(error)
    item.retriable = retriable


def _wrapped(exc: BaseException) -> PublishError:
    error = PublishError(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
