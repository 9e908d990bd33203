"""Every use of FastStream's or nats-py's internals, one small function each.

Each one fails loudly, naming the versions it was written for, when the internal it reads
is not there any more; a test per function notices a host upgrade that breaks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from faststream.nats import NatsBroker
    from nats.aio.client import Client

__all__ = ("CompatibilityError", "broker_connection_kwargs", "mark_tls_stream")

SUPPORTED: Final = "faststream 0.7.x with nats-py 2.12 to 2.16"


class CompatibilityError(RuntimeError):
    """An internal of FastStream or nats-py this package relies on has changed."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: faststream-natspubsub supports {SUPPORTED}")


def broker_connection_kwargs(broker: NatsBroker) -> dict[str, Any]:
    """The keyword arguments FastStream's ``NatsBroker`` hands to ``nats.connect``.

    FastStream keeps them in ``_connection_kwargs`` (0.7.x); the facade wraps the error
    callback in there to hear TLS failures while the broker connects.
    """
    kwargs = getattr(broker, "_connection_kwargs", None)
    if not isinstance(kwargs, dict):
        raise CompatibilityError("NatsBroker._connection_kwargs is gone")
    return kwargs


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
        raise CompatibilityError("nats-py Client._transport._io_writer is gone")
    if writer.transport.get_extra_info("sslcontext") is None:
        return
    replace = getattr(getattr(writer, "_protocol", None), "_replace_writer", None)
    if replace is None:
        raise CompatibilityError("asyncio StreamReaderProtocol._replace_writer is gone")
    replace(writer)
