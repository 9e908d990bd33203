"""Every access to FastStream, nats-py and OpenTelemetry beyond their documented API.

The rest of the package imports these functions instead of touching a host's internals, so a
host upgrade is read in this one file. Each access either has a fallback that works or fails
loudly with :class:`HostVersionError`, naming the versions this package supports; never a
silent default. ``tests/test_compat.py`` exercises every access against the installed hosts.

Supported: FastStream 0.7.x, nats-py 2.12 and newer 2.x, opentelemetry-api 1.23 and newer 1.x
(pyproject.toml's range; CI runs the fast tests on its lowest versions, ``.ci/lowest.txt``).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import TYPE_CHECKING, Any, Final

from nats.aio.msg import Msg

from .errors import NatsPubsubError

if TYPE_CHECKING:
    from collections.abc import Callable

    from faststream import ContextRepo
    from faststream.nats import NatsBroker
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

__all__ = (
    "SUPPORTED_VERSIONS",
    "HostVersionError",
    "broker_connection_kwargs",
    "current_subscriber",
    "flush_pending",
    "handler_function",
    "in_memory_message",
    "kv_reads_directly",
    "mark_settled",
    "mark_tls_stream",
    "message_client",
    "new_in_memory_message",
    "outbound_buffer_room",
    "sdk_meter_provider_installed",
    "send_raw",
    "subscriber_ack_wait",
    "subscriber_durable",
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
