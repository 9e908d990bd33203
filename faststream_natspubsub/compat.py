"""Every access to FastStream, nats-py and OpenTelemetry beyond their documented API.

The rest of the package imports these functions instead of touching a host's internals, so a
host upgrade is read in this one file. Each access either has a fallback that works or fails
loudly with :class:`HostVersionError`, naming the versions this package supports; never a
silent default. ``tests/test_compat.py`` exercises every access against the installed hosts.

Besides the hosts' context and handler internals, the consume path needs:

- a nats-py pull subscription's queue, client, request subject and reply inbox
  (:func:`pull_parts`, :func:`took_from_queue`): to send pull requests ahead and take what
  arrived without nats-py's task-per-message ``fetch``;
- the client's outbound buffer (:func:`send_raw`, :func:`flush_pending`,
  :func:`write_protocol`): many acknowledgements, KV writes or publishes in one write;
- a message's "already acknowledged" flag (:func:`mark_settled`), set after such a write as
  ``ack()`` would, and shadowing a message's ``nak`` (:func:`record_naks`): to learn that a
  handler's message will be redelivered;
- ``UNSUB`` without forgetting the subscription (:func:`stop_interest`): to collect and hand
  back, on close, what the server sent before it saw the ``UNSUB``;
- the client of a JetStream context and a KV bucket's subject prefix
  (:func:`jetstream_client`, :func:`kv_subject_prefix`): to write the inbox's KV operations
  without a request each;
- the typed error of a JetStream ``error`` answer (:func:`api_error`): nats-py raises it
  where it builds it;
- a subscription whose messages go straight to a function (:func:`subscribe_direct`): the
  inbox's KV answers, hundreds per batch, without a queue and a task wake-up each;
- FastStream's pull loop of one subscriber (:func:`replace_pull_loop`) and its ``stop``
  (:func:`wrap_stop`): to run the package's own fetch-ahead and dispatch in its place.

The publish path needs FastStream's publish command (:func:`stream_publish_command`), its
chain of broker middlewares (:func:`through_publish_middlewares`) and its JetStream producer
(:func:`default_stream_producer`): ``publish`` takes ``broker.publish``'s path with its last
step, the producer, done by the package's PubAck router.

Supported: FastStream 0.7.x, nats-py 2.12 and newer 2.x, opentelemetry-api 1.23 and newer 1.x
(pyproject.toml's range; CI runs the fast tests on its lowest versions, ``.ci/lowest.txt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from nats.aio.msg import Msg
from nats.js.errors import APIError

from .errors import NatsPubsubError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream import ContextRepo
    from faststream.nats import NatsBroker
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

__all__ = (
    "SUPPORTED_VERSIONS",
    "HostVersionError",
    "PullParts",
    "api_error",
    "broker_connection_kwargs",
    "current_subscriber",
    "default_stream_producer",
    "flush_pending",
    "handler_function",
    "in_memory_message",
    "jetstream_client",
    "kv_reads_directly",
    "kv_subject_prefix",
    "mark_settled",
    "mark_tls_stream",
    "mark_unsettled",
    "message_client",
    "new_in_memory_message",
    "outbound_buffer_room",
    "pull_parts",
    "record_naks",
    "replace_pull_loop",
    "sdk_meter_provider_installed",
    "send_raw",
    "stop_interest",
    "stop_recording_naks",
    "stream_publish_command",
    "subscribe_direct",
    "subscriber_ack_wait",
    "subscriber_durable",
    "through_publish_middlewares",
    "took_from_queue",
    "wrap_stop",
    "write_protocol",
)

SUPPORTED_VERSIONS: Final = (
    "faststream 0.7.x, nats-py >= 2.12 (< 3), opentelemetry-api >= 1.23 (< 2)"
)

# FastStream's context key for the subscriber whose message is being handled.
_HANDLER_KEY: Final = "handler_"
# nats-py's flag for a message that was acked, NAKed or terminated.
_ACKED_FLAG: Final = "_ackd"


class HostVersionError(NatsPubsubError, RuntimeError):
    """An installed FastStream, nats-py or OpenTelemetry is not what this package supports."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}; faststream-natspubsub supports {SUPPORTED_VERSIONS}")


# -- FastStream ---------------------------------------------------------------------------

try:  # the publish command and JetStream producer of FastStream 0.7
    from faststream._internal.parser import DefaultCodec as _DefaultCodec
    from faststream.nats.publisher.producer import NatsJSFastProducer as _JetStreamProducer
    from faststream.nats.response import NatsPublishCommand as _PublishCommand
    from faststream.response.publish_type import PublishType as _PublishType

    _PRODUCER_KNOWN = True
except ImportError:  # another layout: broker.publish does every publish itself
    _PRODUCER_KNOWN = False


def current_subscriber(context: ContextRepo) -> Any:
    """The FastStream subscriber whose message is being handled in this task, or None.

    FastStream puts it in the context as ``handler_`` while a message is processed (0.7.x).
    """
    return context.get_local(_HANDLER_KEY)


def subscriber_durable(subscriber: Any) -> str | None:
    """The durable name a FastStream NATS subscriber was created with.

    Only middlewares composed by hand need this: the facade knows its subscribers' names.
    """
    config = _subscriber_config(subscriber)
    durable = getattr(config, "durable_name", None)
    return durable if isinstance(durable, str) and durable else None


def subscriber_ack_wait(subscriber: Any) -> float | None:
    """The ``ack_wait`` (seconds) a FastStream NATS subscriber's consumer was created with."""
    ack_wait = getattr(_subscriber_config(subscriber), "ack_wait", None)
    return float(ack_wait) if isinstance(ack_wait, int | float) and ack_wait > 0 else None


def _subscriber_config(subscriber: Any) -> Any:
    config = getattr(subscriber, "config", None)
    if config is None or not hasattr(config, "durable_name"):
        raise HostVersionError(
            f"FastStream subscriber {type(subscriber).__name__} has no consumer config "
            "(`.config.durable_name`)"
        )
    return config


def handler_function(subscriber: Any) -> Callable[..., Any] | None:
    """The user's function behind a subscriber's first handler (for its type hints).

    FastStream 0.7.6 and later keep it as ``_declared_call`` (their ``_original_call`` is the
    composed call); 0.7.0 to 0.7.5 have only ``_original_call``, which after the broker starts
    is the function with the call decorators applied: what FastStream validates against.
    """
    calls = getattr(subscriber, "calls", None)
    if not calls:
        return None
    handler = getattr(calls[0], "handler", None)
    for name in ("_declared_call", "_original_call"):
        function = getattr(handler, name, None)
        if callable(function):
            return function  # type: ignore[no-any-return]
    raise HostVersionError("cannot find the function of a FastStream handler")


def broker_connection_kwargs(broker: NatsBroker) -> dict[str, Any]:
    """The keyword arguments FastStream's ``NatsBroker`` hands to ``nats.connect``.

    FastStream keeps them in ``_connection_kwargs`` (0.7.x); the host wraps the error
    callback in there to hear TLS and permission failures while the broker connects.
    """
    kwargs = getattr(broker, "_connection_kwargs", None)
    if not isinstance(kwargs, dict):
        raise HostVersionError("FastStream's NatsBroker._connection_kwargs is gone")
    return kwargs


def replace_pull_loop(
    subscriber: Any, loop: Callable[[Callable[[Msg], Awaitable[Any]]], Awaitable[None]]
) -> None:
    """Run ``loop(consume)`` instead of FastStream's fetch loop for one pull subscriber.

    FastStream 0.7's ``PullStreamSubscriber`` starts ``self._consume_pull(cb=self.consume)``
    as its task once subscribed; ``consume(msg)`` runs the whole handling of one message
    (middlewares, handler, acknowledgement), or nothing once the subscriber is stopping.
    Call it before the subscriber starts.
    """
    original = getattr(type(subscriber), "_consume_pull", None)
    if original is None or "cb" not in inspect.signature(original).parameters:
        raise HostVersionError("FastStream's pull subscriber has no _consume_pull(cb)")

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
        raise HostVersionError("FastStream's subscriber has no async stop()")

    async def stop(*args: Any, **kwargs: Any) -> None:
        await before()
        try:
            await original(*args, **kwargs)
        finally:
            await after()

    subscriber.stop = stop


def default_stream_producer(broker: NatsBroker) -> Any | None:
    """The broker's JetStream producer when it is FastStream's own with its default codec,
    which sends a body of bytes unchanged; else None (``TestNatsBroker``'s, a custom codec's,
    another FastStream layout's): then only ``broker.publish`` knows what a publish does."""
    if not _PRODUCER_KNOWN:
        return None
    producer = getattr(broker.config, "js_producer", None)
    if type(producer) is not _JetStreamProducer:
        return None
    if type(getattr(producer, "codec", None)) is not _DefaultCodec:
        return None
    return producer


def stream_publish_command(
    message: Any,
    *,
    subject: str,
    headers: dict[str, str] | None,
    correlation_id: str,
    stream: str,
    timeout: float,
) -> Any:
    """The command ``broker.publish(message, subject, stream=stream, ...)`` builds (call it
    only when :func:`default_stream_producer` found FastStream's producer)."""
    return _PublishCommand(
        message,
        subject=subject,
        correlation_id=correlation_id,
        headers=headers,
        stream=stream,
        timeout=timeout or 0.5,
        _publish_type=_PublishType.PUBLISH,
    )


async def through_publish_middlewares(
    broker: NatsBroker, cmd: Any, last_step: Callable[[Any], Awaitable[Any]]
) -> Any:
    """Run ``cmd`` through every broker middleware's ``publish_scope`` as ``broker.publish``
    does (the first added outermost), with ``last_step`` in place of its producer."""
    publish = last_step
    context = broker.context
    for middleware in broker.middlewares[::-1]:
        publish = partial(middleware(None, context=context).publish_scope, publish)
    return await publish(cmd)


# -- nats-py messages ---------------------------------------------------------------------


def _check_msg_flag() -> None:
    """nats-py's Msg must keep its ack flag where ``mark_settled`` writes it."""
    fields = getattr(Msg, "__dataclass_fields__", {})
    if _ACKED_FLAG not in fields or not isinstance(getattr(Msg, "is_acked", None), property):
        raise HostVersionError("nats-py's Msg has no `_ackd` flag behind `is_acked`")
    if "_client" not in fields:
        raise HostVersionError("nats-py's Msg has no `_client` field")


_check_msg_flag()


def mark_settled(raw: Msg) -> None:
    """Record that ``raw`` was acked/terminated by a protocol write made by hand.

    nats-py's own ``ack()``/``term()`` set this flag; FastStream then sends nothing more.
    Used after a ``+TERM <reason>`` or a batch of ``+ACK`` written in one go.
    """
    setattr(raw, _ACKED_FLAG, True)


def mark_unsettled(raw: Msg) -> None:
    """Undo :func:`mark_settled` for ``raw`` when nothing was written for it after all."""
    setattr(raw, _ACKED_FLAG, False)


def message_client(raw: Msg) -> Client | None:
    """The connection a message arrived on; None for ``TestNatsBroker``'s in-memory messages."""
    client: Client | None = raw._client
    return client


def in_memory_message(raw: Any) -> bool:
    """True for a message made by ``TestNatsBroker`` (no connection behind it)."""
    return isinstance(raw, Msg) and raw._client is None


def new_in_memory_message(
    *, subject: str, reply: str, data: bytes, headers: dict[str, str] | None
) -> Msg:
    """A message like the ones ``TestNatsBroker`` delivers (no connection)."""
    return Msg(_client=None, subject=subject, reply=reply, data=data, headers=headers)  # type: ignore[arg-type]


def record_naks(msg: Msg, on_nak: Callable[[float | None], None]) -> None:
    """Call ``on_nak(delay)`` whenever ``msg.nak(delay=...)`` is called, then NAK as usual.

    FastStream NAKs through the raw message's ``nak``; shadowing it on this one instance is
    how the dispatcher learns that a handled message will be redelivered.
    """
    original = getattr(msg, "nak", None)
    if original is None or not inspect.iscoroutinefunction(original):
        raise HostVersionError("nats-py's Msg has no async nak()")

    async def nak(delay: float | None = None) -> None:
        on_nak(delay)
        await original(delay=delay)

    msg.nak = nak  # type: ignore[method-assign]


def stop_recording_naks(msg: Msg) -> None:
    """Undo :func:`record_naks` (its function refers to the message: a reference cycle that
    only the garbage collector would free)."""
    msg.__dict__.pop("nak", None)


# -- nats-py connection -------------------------------------------------------------------


def _client_method(client: Client, name: str) -> Callable[..., Any]:
    method = getattr(client, name, None)
    if method is None or not inspect.iscoroutinefunction(method):
        raise HostVersionError(f"nats-py's Client has no coroutine {name}()")
    return method  # type: ignore[no-any-return]


async def send_raw(client: Client, data: bytes) -> None:
    """Queue raw protocol bytes (``HPUB``/``PUB`` frames) on the connection's write buffer.

    Pipelined publishing and batch acks write many frames at once; nats-py's public
    ``publish`` costs a call (and an await) per frame.
    """
    await _client_method(client, "_send_command")(data)


async def flush_pending(client: Client) -> None:
    """Ask the connection to write its buffer now (as ``publish`` does after each frame)."""
    if client.is_connected:
        await _client_method(client, "_flush_pending")()


async def write_protocol(client: Client, data: bytes) -> None:
    """:func:`send_raw` then :func:`flush_pending`: many protocol lines in one write,
    fire-and-forget as ``publish`` is."""
    await send_raw(client, data)
    await flush_pending(client)


def outbound_buffer_room(client: Client) -> int:
    """Bytes that may still be buffered while the connection is down (0: none).

    nats-py refuses a publish with ``OutboundBufferLimitError`` beyond this room, and buffers
    nothing while reconnecting when its pending size is not positive.
    """
    limit = getattr(client, "_max_pending_size", None)
    used = getattr(client, "_pending_data_size", None)
    if not isinstance(limit, int) or not isinstance(used, int):
        raise HostVersionError("nats-py's Client has no outbound buffer accounting")
    return 0 if limit <= 0 else limit - used


def kv_reads_directly(kv: KeyValue) -> bool:
    """Whether nats-py reads the bucket's keys with direct gets (``$JS.API.DIRECT.GET``)
    rather than ``$JS.API.STREAM.MSG.GET``: it decides from the stream's ``allow_direct``
    when the bucket is opened, and keeps the answer as ``_direct`` (nats-py 2.x)."""
    direct = getattr(kv, "_direct", None)
    if not isinstance(direct, bool):
        raise HostVersionError("nats-py's KeyValue has no `_direct` flag")
    return direct


def mark_tls_stream(nc: Client) -> None:
    """Tell the TLS stream of ``nc`` that it runs over TLS.

    nats-py upgrades a connection to TLS with ``loop.start_tls`` and a fresh
    ``StreamReaderProtocol`` that asyncio never hands a transport (``start_tls`` does not
    call ``connection_made``), so the protocol believes it is not over TLS, answers
    ``eof_received`` with True, and asyncio logs "returning true from eof_received() has no
    effect when using ssl" at every close. ``_replace_writer`` is what asyncio's own
    ``StreamWriter.start_tls`` calls after an upgrade; a plain connection is left alone.
    """
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    if writer is None:
        raise HostVersionError("nats-py Client._transport._io_writer is gone")
    if writer.transport.get_extra_info("sslcontext") is None:
        return
    replace = getattr(getattr(writer, "_protocol", None), "_replace_writer", None)
    if replace is None:
        raise HostVersionError("asyncio StreamReaderProtocol._replace_writer is gone")
    replace(writer)


# -- nats-py pull subscriptions and KV ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PullParts:
    """What the package's fetching uses of one nats-py ``PullSubscription``."""

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
        raise HostVersionError("not a nats-py pull subscription as this package knows it")
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


async def stop_interest(parts: PullParts) -> None:
    """Send ``UNSUB`` for the pull's inbox but keep receiving, until the server has seen it.

    After this returns, the server sends nothing more to the inbox, and everything it sent
    before is in ``parts.queue`` (a PING/PONG round trip): nothing is left in flight.
    """
    unsubscribe = getattr(parts.client, "_send_unsubscribe", None)
    if unsubscribe is None:
        raise HostVersionError("nats-py's Client has no _send_unsubscribe")
    await unsubscribe(parts.subscription._id)
    await parts.client.flush()


def jetstream_client(js: Any) -> Client:
    """The connection of a nats-py ``JetStreamContext``."""
    client = getattr(js, "_nc", None)
    if client is None or not hasattr(client, "new_inbox"):
        raise HostVersionError("nats-py's JetStreamContext has no _nc client")
    return client  # type: ignore[no-any-return]


def kv_subject_prefix(kv: Any) -> str:
    """``$KV.<bucket>.`` (or its JetStream-domain form): a key's subject is this plus the key."""
    prefix = getattr(kv, "_pre", None)
    if not isinstance(prefix, str):
        raise HostVersionError("nats-py's KeyValue has no _pre subject prefix")
    return prefix


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
        raise HostVersionError("nats-py's Subscription has no _pending_queue/_pending_size")
    subscription._pending_queue = _Direct(subscription, on_msg)  # type: ignore[assignment]
    return subscription


def api_error(error: dict[str, Any]) -> APIError:
    """nats-py's typed error (``ServiceUnavailableError`` for a 503, ...) for a JetStream
    ``error`` object. ``APIError.from_error`` raises it rather than returning it; both are
    taken, so a release that returns it works too. A malformed object raises."""
    try:
        made = APIError.from_error(error)
    except APIError as exc:
        return exc
    if isinstance(made, APIError):
        return made
    raise HostVersionError(f"nats-py's APIError.from_error gave {made!r}")


# -- OpenTelemetry ------------------------------------------------------------------------


def sdk_meter_provider_installed() -> bool:
    """True when a real (SDK) meter provider is installed globally.

    The API's own providers (no-op, and the proxy it returns before an SDK is set) record
    nothing, so the hot paths can skip the work that only feeds metrics.
    """
    from opentelemetry import metrics

    provider = metrics.get_meter_provider()
    if isinstance(provider, metrics.NoOpMeterProvider):
        return False
    proxy: type[Any] | None = None
    with contextlib.suppress(ImportError):
        from opentelemetry.metrics._internal import _ProxyMeterProvider as proxy
    if proxy is not None:
        return not isinstance(provider, proxy)
    # Fallback: the API package's own providers live in its module tree; an SDK's do not.
    return not type(provider).__module__.startswith("opentelemetry.metrics")
