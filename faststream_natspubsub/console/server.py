"""Serving the console alone (``natspubsub console``): its own NATS connection, uvicorn."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .app import OperationsConsole

if TYPE_CHECKING:
    from nats.aio.client import Client

    from .http import Message, Receive, Scope, Send

__all__ = ("StandaloneConsole", "serve")

logger = logging.getLogger("faststream_natspubsub.console")


class StandaloneConsole:
    """The console on a connection of its own, opened when the server starts.

    ``connect`` opens the connection (reconnecting, unlike the one-shot CLI commands);
    ``options`` go to :class:`OperationsConsole`.
    """

    def __init__(self, connect: Callable[[], Awaitable[Client]], **options: Any) -> None:
        self._connect = connect
        self._nc: Client | None = None
        self.console = OperationsConsole(self._connection, **options)

    def _connection(self) -> Client:
        if self._nc is None:
            raise RuntimeError("the console is not started")
        return self._nc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: the lifespan connects and disconnects; requests go to the console."""
        if scope["type"] != "lifespan":
            await self.console(scope, receive, send)
            return
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self._nc = await self._connect()
                    await self.console.startup()
                except Exception as exc:  # noqa: BLE001 - the server reports it and does not start
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.console.shutdown()
                if self._nc is not None:
                    await self._nc.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def serve(app: StandaloneConsole, *, host: str, port: int) -> None:
    """Run ``app`` with uvicorn until interrupted (needs the ``console`` extra)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(
            "serving the console needs uvicorn: pip install 'faststream-natspubsub[console]'"
        ) from exc
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level="info")
    await uvicorn.Server(config).serve()
