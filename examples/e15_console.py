"""The operations console, mounted in a FastStream ASGI app next to a health route.

``python examples/e15_console.py`` serves it on a throw-away ``nats-server`` at
http://127.0.0.1:8300/natspubsub (log in with the token it prints; needs uvicorn, which the
``console`` extra installs). A payment over 900 is refused by the handler and dead-lettered,
so the console has something to show.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

import httpx
import uvicorn
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import DeadLetterQueue, NatsPubsub, PermanentError
from faststream_natspubsub.console import OutboxStats
from faststream_natspubsub.testing import EmbeddedNatsServer


class Payment(BaseModel):
    payment_id: str
    amount: float


# --8<-- [start:outbox]
class OutboxLag:
    """Any object with ``outbox_stats()`` (sync or async), or a plain function, will do."""

    async def outbox_stats(self) -> OutboxStats:
        # A real outbox counts its rows; this stand-in says nothing is waiting.
        return OutboxStats(pending=0, oldest_pending_age=None, failed=0)


# --8<-- [end:outbox]


def build(url: str, *, token: str) -> tuple[AsgiFastStream, NatsPubsub]:
    """The app: one handler, its health route and its console."""
    broker = NatsBroker(url, logger=None)
    pubsub = NatsPubsub(broker, env="dev", app="payments")

    @pubsub.subscriber("payment.requested")
    async def charge(payment: Payment) -> None:
        if payment.amount > 900:
            raise PermanentError(f"card declined for {payment.payment_id}")

    # --8<-- [start:mount]
    app = AsgiFastStream(
        broker,
        asgi_routes=[
            ("/health", pubsub.health_route()),
            # Read-only without actions=True; actions need a token (or auth=your_check).
            ("/natspubsub", pubsub.console(actions=True, token=token, outbox=OutboxLag())),
        ],
    )
    # --8<-- [end:mount]
    return app, pubsub


@dataclass(frozen=True)
class Outcome:
    """What a browser-less visit saw, for the tests."""

    health: int
    without_token: int
    overview: str
    record: str


async def main(url: str) -> Outcome:
    """Serve the app, dead-letter one payment, and look at the console over HTTP."""
    token = secrets.token_urlsafe(24)
    app, pubsub = build(url, token=token)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn has no "started" event
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            # The broker starts with the app's lifespan: healthy once connected and declared.
            while (await client.get("/health")).status_code != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await pubsub.publish("payment.requested", Payment(payment_id="PAY-1", amount=950.0))
            dlq = DeadLetterQueue(pubsub.broker.connection.jetstream(), env="dev", app="payments")
            while not await dlq.list():  # noqa: ASYNC110 - polling the server
                await asyncio.sleep(0.05)
            health = (await client.get("/health")).status_code
            without_token = (await client.get("/natspubsub")).status_code
            client.headers["Authorization"] = f"Bearer {token}"
            overview = (await client.get("/natspubsub")).text
            record = (await client.get("/natspubsub", params={"view": "record", "seq": 1})).text
        return Outcome(health, without_token, overview, record)
    finally:
        server.should_exit = True
        await serving


async def serve_forever() -> None:
    async with EmbeddedNatsServer() as nats_server:
        token = secrets.token_urlsafe(24)
        app, pubsub = build(nats_server.url, token=token)
        print(f"console: http://127.0.0.1:8300/natspubsub  token: {token}")
        config = uvicorn.Config(app, host="127.0.0.1", port=8300)
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn has no "started" event
            await asyncio.sleep(0.01)
        while (await pubsub.health()).status.value == "unhealthy":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await pubsub.publish("payment.requested", Payment(payment_id="PAY-1", amount=950.0))
        await serving


if __name__ == "__main__":
    asyncio.run(serve_forever())
