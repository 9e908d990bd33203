"""Every use of FastStream or nats-py beyond their documented API, behind one door.

Each function is one access, checked when it runs: when the host library is not what it
expects, it raises :class:`CompatError` naming the versions this package supports, rather
than misbehaving quietly. ``tests/test_compat.py`` runs each one against the installed
versions, so an upgrade that breaks one fails there first.

Accesses, and why they are needed:

- a nats-py pull subscription's queue, client, request subject and reply inbox
  (:func:`pull_parts`, :func:`took_from_queue`): to send pull requests ahead and take what
  arrived without nats-py's task-per-message ``fetch``;
- the client's outbound buffer (:func:`write_protocol`): to send many acknowledgements or
  publishes in one write;
- a message's "already acknowledged" flag (:func:`settle_locally`): set after such a write,
  as ``ack()`` would, and shadowing a message's ``nak`` (:func:`record_naks`): to learn that
  a handler's message will be redelivered;
- ``UNSUB`` without forgetting the subscription (:func:`stop_interest`): to collect and
  hand back, on close, what the server sent before it saw the ``UNSUB``;
- the client of a JetStream context and of a message, and a KV bucket's subject prefix
  (:func:`jetstream_client`, :func:`message_client`, :func:`kv_subject_prefix`): to write
  the inbox's KV operations and the acknowledgements after them without a request each;
- a subscription whose messages go straight to a function (:func:`subscribe_direct`): the
  inbox's KV answers, hundreds per batch, without a queue and a task wake-up each;
- FastStream's pull loop of one subscriber (:func:`replace_pull_loop`) and its ``stop``
  (:func:`wrap_stop`): to run the plugin's own fetch-ahead and dispatch in its place.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .errors import NatsPubsubError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = (
    "SUPPORTED",
    "CompatError",
    "PullParts",
    "jetstream_client",
    "kv_subject_prefix",
    "message_client",
    "pull_parts",
    "record_naks",
    "replace_pull_loop",
    "settle_locally",
    "stop_interest",
    "stop_recording_naks",
    "subscribe_direct",
    "took_from_queue",
    "wrap_stop",
    "write_protocol",
)

SUPPORTED: Final = "faststream 0.7.x with nats-py 2.12 to 2.16"


class CompatError(NatsPubsubError, RuntimeError):
    """FastStream or nats-py is not what this package was built against."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}; faststream-natspubsub supports {SUPPORTED}")


@dataclass(frozen=True, slots=True)
class PullParts:
    """What the plugin's fetching uses of one nats-py ``PullSubscription``."""

    client: Client
    subscription: Any
    """nats-py's core ``Subscription`` behind the pull subscription."""
    queue: asyncio.Queue[Msg]
    """Where nats-py puts what the server sends to the pull's reply inbox."""
    next_subject: str
    """``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``: where pull requests go."""
    deliver_subject: str
    """The reply inbox that pull requests name."""


def pull_parts(pull_subscription: Any) -> PullParts:
    """The parts of a nats-py ``JetStreamContext.PullSubscription``."""
    sub = getattr(pull_subscription, "_sub", None)
    queue = getattr(sub, "_pending_queue", None)
    client = getattr(pull_subscription, "_nc", None)
    next_subject = getattr(pull_subscription, "_nms", None)
    deliver = getattr(pull_subscription, "_deliver", None)
    if not (
        isinstance(queue, asyncio.Queue)
        and isinstance(getattr(sub, "_pending_size", None), int)
        and isinstance(getattr(sub, "_id", None), int)
        and isinstance(next_subject, str)
        and isinstance(deliver, str)
        and client is not None
    ):
        raise CompatError("not a nats-py pull subscription as this package knows it")
    return PullParts(
        client=client,
        subscription=sub,
        queue=queue,
        next_subject=next_subject,
        deliver_subject=deliver,
    )


def took_from_queue(parts: PullParts, msg: Msg) -> None:
    """nats-py's own bookkeeping for a message taken from a subscription's queue."""
    parts.subscription._pending_size -= len(msg.data)
    parts.queue.task_done()


async def write_protocol(client: Client, data: bytes) -> None:
    """Hand raw protocol lines to the client's send buffer and wake its flusher.

    Fire-and-forget, as ``publish`` is; one call for many lines instead of one each.
    """
    send = getattr(client, "_send_command", None)
    flush = getattr(client, "_flush_pending", None)
    if send is None or flush is None:
        raise CompatError("nats-py's client has no _send_command/_flush_pending")
    await send(data)
    if client.is_connected:
        await flush()


def jetstream_client(js: Any) -> Client:
    """The connection of a nats-py ``JetStreamContext``."""
    client = getattr(js, "_nc", None)
    if client is None or not hasattr(client, "new_inbox"):
        raise CompatError("nats-py's JetStreamContext has no _nc client")
    return client  # type: ignore[no-any-return]


def message_client(msg: Msg) -> Client | None:
    """The connection a message came on (None for messages made in memory)."""
    if not hasattr(msg, "_client"):
        raise CompatError("nats-py's Msg has no _client")
    return msg._client


def kv_subject_prefix(kv: Any) -> str:
    """``$KV.<bucket>.`` (or its JetStream-domain form): a key's subject is this plus the key."""
    prefix = getattr(kv, "_pre", None)
    if not isinstance(prefix, str):
        raise CompatError("nats-py's KeyValue has no _pre subject prefix")
    return prefix


def settle_locally(msg: Msg) -> None:
    """Mark ``msg`` as acknowledged, as nats-py's ``ack``/``nak``/``term`` do.

    For a message whose ``+ACK``/``-NAK``/``+TERM`` went out through :func:`write_protocol`:
    later ``ack()`` calls (FastStream's) then do nothing, as for any acknowledged message.
    """
    if not hasattr(msg, "_ackd"):
        raise CompatError("nats-py's Msg has no _ackd flag")
    msg._ackd = True


def record_naks(msg: Msg, on_nak: Callable[[float | None], None]) -> None:
    """Call ``on_nak(delay)`` whenever ``msg.nak(delay=...)`` is called, then NAK as usual.

    FastStream NAKs through the raw message's ``nak``; shadowing it on this one instance is
    how the dispatcher learns that a handled message will be redelivered.
    """
    original = getattr(msg, "nak", None)
    if original is None or not inspect.iscoroutinefunction(original):
        raise CompatError("nats-py's Msg has no async nak()")

    async def nak(delay: float | None = None) -> None:
        on_nak(delay)
        await original(delay=delay)

    msg.nak = nak  # type: ignore[method-assign]


def stop_recording_naks(msg: Msg) -> None:
    """Undo :func:`record_naks` (its function refers to the message: a reference cycle that
    only the garbage collector would free)."""
    msg.__dict__.pop("nak", None)


async def stop_interest(parts: PullParts) -> None:
    """Send ``UNSUB`` for the pull's inbox but keep receiving, until the server has seen it.

    After this returns, the server sends nothing more to the inbox, and everything it sent
    before is in ``parts.queue`` (a PING/PONG round trip): nothing is left in flight.
    """
    unsubscribe = getattr(parts.client, "_send_unsubscribe", None)
    if unsubscribe is None:
        raise CompatError("nats-py's client has no _send_unsubscribe")
    await unsubscribe(parts.subscription._id)
    await parts.client.flush()


def replace_pull_loop(
    subscriber: Any, loop: Callable[[Callable[[Msg], Awaitable[Any]]], Awaitable[None]]
) -> None:
    """Run ``loop(consume)`` instead of FastStream's fetch loop for one pull subscriber.

    FastStream 0.7's ``PullStreamSubscriber`` starts ``self._consume_pull(cb=self.consume)``
    as its task once subscribed; ``consume(msg)`` runs the whole handling of one message
    (middlewares, handler, acknowledgement), or nothing once the subscriber is stopping.
    """
    original = getattr(type(subscriber), "_consume_pull", None)
    if original is None or "cb" not in inspect.signature(original).parameters:
        raise CompatError("FastStream's pull subscriber has no _consume_pull(cb)")

    async def consume_pull(cb: Callable[[Msg], Awaitable[Any]]) -> None:
        await loop(cb)

    subscriber._consume_pull = consume_pull


def wrap_stop(
    subscriber: Any,
    *,
    before: Callable[[], Awaitable[None]],
    after: Callable[[], Awaitable[None]],
) -> None:
    """Run ``before()`` when the subscriber starts stopping and ``after()`` once it stopped.

    FastStream's ``stop`` waits for running handlers (``graceful_timeout``), then closes the
    subscription; ``before`` comes ahead of that wait, ``after`` behind the close.
    """
    original = getattr(subscriber, "stop", None)
    if original is None or not inspect.iscoroutinefunction(original):
        raise CompatError("FastStream's subscriber has no async stop()")

    async def stop(*args: Any, **kwargs: Any) -> None:
        await before()
        try:
            await original(*args, **kwargs)
        finally:
            await after()

    subscriber.stop = stop


class _Direct:
    """Stands in for a subscription's queue: every message goes to ``on_msg`` at once."""

    __slots__ = ("_on_msg", "_subscription")

    def __init__(self, subscription: Any, on_msg: Callable[[Msg], None]) -> None:
        self._subscription = subscription
        self._on_msg = on_msg

    def put_nowait(self, msg: Msg) -> None:
        self._subscription._pending_size -= len(msg.data)  # nothing is kept pending
        self._on_msg(msg)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def full(self) -> bool:
        return False

    def __len__(self) -> int:  # falsy: draining the subscription has nothing to wait for
        return 0


async def subscribe_direct(client: Client, subject: str, on_msg: Callable[[Msg], None]) -> Any:
    """Subscribe to ``subject`` with ``on_msg`` called for each message as it is read.

    nats-py hands a callback subscription's messages to a task through a queue, one
    wake-up each; for answers that only settle futures that costs more than the work.
    ``on_msg`` must be quick and must not raise.
    """
    subscription = await client.subscribe(subject)
    if not isinstance(getattr(subscription, "_pending_queue", None), asyncio.Queue) or not (
        isinstance(getattr(subscription, "_pending_size", None), int)
    ):
        raise CompatError("nats-py's Subscription has no _pending_queue/_pending_size")
    subscription._pending_queue = _Direct(subscription, on_msg)  # type: ignore[assignment]
    return subscription
