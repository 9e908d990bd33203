"""Connect to a NATS server over TLS with a user and password, FastStream's way.

FastStream's ``NatsBroker`` takes TLS and credentials in ``security=``; NatsPubsub uses the
broker's connection as it is. Run by the tests against a TLS server they start.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from faststream.nats import NatsBroker
from faststream.security import SASLPlaintext

from faststream_natspubsub import EventMetadata, NatsPubsub


async def main(url: str, *, ca_file: str, user: str, password: str) -> EventMetadata:
    """Publish one event over TLS and return what its handler saw."""
    # --8<-- [start:security]
    context = ssl.create_default_context(cafile=ca_file)  # the CA that signed the server
    # For mutual TLS, also: context.load_cert_chain("client.pem", "client-key.pem")
    broker = NatsBroker(
        url,  # tls://nats.example.com:4222
        security=SASLPlaintext(user, password, ssl_context=context),
        logger=None,
    )
    pubsub = NatsPubsub(broker, env="dev", app="orders")
    # --8<-- [end:security]
    received: asyncio.Queue[EventMetadata] = asyncio.Queue()

    @pubsub.subscriber("order.created")
    async def created(body: dict[str, Any], meta: EventMetadata) -> None:
        await received.put(meta)

    await broker.start()
    try:
        await pubsub.publish("order.created", {"order_id": "ORD-1"})
        return await asyncio.wait_for(received.get(), 10)
    finally:
        await broker.stop()
