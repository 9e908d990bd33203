"""A live console for the tests: a real server, an app with a consumer, the console over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from console_support import CONSOLE_TOKEN, http_server
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker
from nats.aio.client import Client

from faststream_natspubsub import EventMetadata, NatsPubsub
from faststream_natspubsub.console import OperationsConsole
from faststream_natspubsub.testing import EmbeddedNatsServer

CONSOLE_PATH = "/natspubsub"


@dataclass
class LiveConsole:
    """The app (``billing``, consuming every topic of ``orders``) and its mounted console."""

    server: EmbeddedNatsServer
    env: str
    app: str
    broker: NatsBroker
    pubsub: NatsPubsub
    console: OperationsConsole
    base_url: str
    handled: list[EventMetadata] = field(default_factory=list)
    """Events the app's consumer handled (replays arrive here)."""

    @property
    def nc(self) -> Client:
        connection = self.broker.connection
        assert isinstance(connection, Client)
        return connection

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client on the console's origin (cookies kept, redirects not followed)."""
        kwargs.setdefault("follow_redirects", False)
        return httpx.AsyncClient(base_url=self.base_url, timeout=30.0, **kwargs)

    @property
    def dlq_stream(self) -> str:
        return f"DLQ_{self.env.upper()}_{self.app.upper()}"


@asynccontextmanager
async def live_console(
    server: EmbeddedNatsServer, **console_options: Any
) -> AsyncIterator[LiveConsole]:
    """Start the app with the console mounted at ``/natspubsub`` in an ``AsgiFastStream``."""
    env = f"t{uuid.uuid4().hex[:8]}"
    broker = NatsBroker(server.url, logger=None)
    pubsub = NatsPubsub(broker, env=env, app="billing")
    handled: list[EventMetadata] = []

    @pubsub.subscriber(">", app="orders")
    async def on_order_event(body: dict[str, Any], meta: EventMetadata) -> None:
        handled.append(meta)

    console_options.setdefault("token", CONSOLE_TOKEN)
    console_options.setdefault("actions", True)
    console = pubsub.console(**console_options)
    asgi = AsgiFastStream(broker, asgi_routes=[(CONSOLE_PATH, console)])
    await broker.start()
    try:
        async with http_server(asgi) as base_url:
            yield LiveConsole(
                server=server,
                env=env,
                app="billing",
                broker=broker,
                pubsub=pubsub,
                console=console,
                base_url=base_url,
                handled=handled,
            )
    finally:
        await console.shutdown()
        await broker.stop()


@pytest.fixture
def make_console(
    server: EmbeddedNatsServer,
) -> Callable[..., Any]:
    """``async with make_console(**options) as live:`` a console with these options."""

    def make(**options: Any) -> Any:
        return live_console(server, **options)

    return make
