"""A broker's first connection: a TLS failure is said at once, not retried in silence.

nats-py treats a failed TLS handshake like a refused connection and tries again for as long
as ``max_reconnect_attempts`` allows, calling only the error callback, which FastStream logs
for nats errors alone: an app whose TLS context trusts the wrong CA waited without a word.
No retry fixes a certificate, so the first TLS failure of a start is logged at ERROR and
ends the start with that error. Later reconnects keep nats-py's behaviour (a server may be
mid-rotation); their TLS failures are logged at ERROR too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

from .compat import broker_connection_kwargs
from .violations import PermissionWatch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream.nats import NatsBroker
    from nats.aio.client import Client

__all__ = ("ConnectionWatch", "describe_tls_error")

logger = logging.getLogger("faststream_natspubsub.connection")


def describe_tls_error(exc: ssl.SSLError) -> str:
    """``certificate verify failed: unable to get local issuer certificate`` and the like."""
    detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    reason = exc.reason or type(exc).__name__
    return f"{reason.replace('_', ' ').lower()}: {detail}" if detail != reason else str(reason)


class ConnectionWatch:
    """Hears the broker's connection errors; :meth:`connect` ends at the first TLS failure.

    Permission violations go to :attr:`permissions`, which fails the request they refuse.
    """

    def __init__(self, broker: NatsBroker) -> None:
        self._kwargs = kwargs = broker_connection_kwargs(broker)
        self._original = kwargs.get("error_cb")
        self._tls_failure: asyncio.Future[ssl.SSLError] | None = None
        self.permissions = PermissionWatch(inbox_prefix=self._inbox_prefix())
        kwargs["error_cb"] = self._on_error

    def _inbox_prefix(self) -> str:
        prefix = self._kwargs.get("inbox_prefix") or "_INBOX"
        return prefix.decode() if isinstance(prefix, bytes) else str(prefix)

    async def _on_error(self, exc: Exception) -> None:
        self.permissions.hear(exc)
        if isinstance(exc, ssl.SSLError):
            waiting = self._tls_failure
            if waiting is not None and not waiting.done():
                waiting.set_result(exc)
            else:
                logger.error(
                    "TLS handshake with the NATS server failed: %s", describe_tls_error(exc)
                )
        if self._original is not None:
            await self._original(exc)

    async def connect(self, connect: Callable[[], Awaitable[Client]]) -> Client:
        """Run ``connect``; raise the TLS error as soon as one happens instead of waiting."""
        self.permissions.inbox_prefix = self._inbox_prefix()
        self.permissions.connected()
        loop = asyncio.get_running_loop()
        self._tls_failure = failure = loop.create_future()
        attempt: asyncio.Future[Any] = asyncio.ensure_future(connect())
        try:
            await asyncio.wait({attempt, failure}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled from outside: do not leave the attempt running
            attempt.cancel()
            raise
        finally:
            self._tls_failure = None
        if attempt.done():
            failure.cancel()
            return attempt.result()  # type: ignore[no-any-return]
        attempt.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await attempt
        error = failure.result()
        logger.error(
            "cannot connect to NATS: TLS handshake failed: %s (check the CA and certificates "
            "of the broker's TLS context); not retrying",
            describe_tls_error(error),
        )
        raise error
