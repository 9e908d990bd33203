"""Publishing many events at once, choosing event ids, and FastStream publishers.

``python examples/e05_publishing.py`` runs it on a throw-away ``nats-server``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from faststream.nats import NatsBroker

from faststream_natspubsub import EventMetadata, NatsPubsub, OutgoingEvent, PublishResult
from faststream_natspubsub.testing import EmbeddedNatsServer


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    results: list[PublishResult]
    received: list[tuple[dict[str, Any], EventMetadata]]


async def main(url: str) -> Outcome:
    """Publish a batch with one bad item, then an event through a FastStream publisher."""
    broker = NatsBroker(url, logger=None)
    pubsub = NatsPubsub(broker, env="dev", app="catalog")
    received: asyncio.Queue[tuple[dict[str, Any], EventMetadata]] = asyncio.Queue()

    @pubsub.subscriber("product.>")  # every product topic of this app
    async def on_product(body: dict[str, Any], meta: EventMetadata) -> None:
        await received.put((body, meta))

    await broker.start()
    try:
        # --8<-- [start:many]
        results = await pubsub.publish_many(
            [
                ("product.created", {"sku": "A-1"}),
                ("product.created", OutgoingEvent(message={"sku": "A-2"}, event_id="imp-7:A-2")),
                ("product..created", {"sku": "A-3"}),  # invalid topic: only this item fails
            ],
            metadata={"correlation_id": "import-7"},  # added to every item
        )
        for result in results:
            print(result.ok, result.event_id, result.seq, repr(result.error))
        # --8<-- [end:many]

        # --8<-- [start:publisher]
        price_changed = pubsub.publisher("product.price_changed")  # dev.catalog.product...
        await price_changed.publish(
            OutgoingEvent(message={"sku": "A-1", "price": 9.5}, metadata={"user_id": "u-42"})
        )
        # --8<-- [end:publisher]
        events = [await asyncio.wait_for(received.get(), timeout=10) for _ in range(3)]
    finally:
        await broker.stop()
    return Outcome(results=results, received=events)


async def _run() -> None:
    async with EmbeddedNatsServer() as server:
        outcome = await main(server.url)
    for body, meta in outcome.received:
        print(f"{meta.topic}: {body} correlation_id={meta.correlation_id} user_id={meta.user_id}")


if __name__ == "__main__":
    asyncio.run(_run())
