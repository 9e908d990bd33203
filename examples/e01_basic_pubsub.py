"""Publish an event and handle it with its metadata.

``python examples/e01_basic_pubsub.py`` runs it on a throw-away ``nats-server``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import (
    CurrentEnvelope,
    Envelope,
    EventMetadata,
    NatsPubsub,
    PublishResult,
)
from faststream_natspubsub.testing import EmbeddedNatsServer


# --8<-- [start:model]
class Order(BaseModel):
    order_id: str
    total: float


# --8<-- [end:model]


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    published: PublishResult
    duplicate: PublishResult
    order: Order
    meta: EventMetadata
    envelope: Envelope


async def main(url: str) -> Outcome:
    """Publish one order, handle it, then publish it again with the same event id."""
    # --8<-- [start:app]
    broker = NatsBroker(url, logger=None)  # logger=None: no log line per message
    pubsub = NatsPubsub(broker, env="dev", app="orders")
    received: asyncio.Queue[tuple[Order, EventMetadata, CurrentEnvelope]] = asyncio.Queue()

    @pubsub.subscriber("order.created")  # dev.orders.order.created
    async def on_created(order: Order, meta: EventMetadata, envelope: CurrentEnvelope) -> None:
        await received.put((order, meta, envelope))

    # --8<-- [end:app]

    await broker.start()  # declares the streams and consumers, then starts consuming
    try:
        # --8<-- [start:publish]
        result = await pubsub.publish(
            "order.created",
            Order(order_id="ORD-1", total=25.0),
            metadata={"correlation_id": "checkout-1"},
        )
        # PublishResult(event_id='5f0c...', subject='dev.orders.order.created',
        #               stream='DEV_ORDERS', seq=1, duplicate=False, error=None)
        # --8<-- [end:publish]
        order, meta, envelope = await asyncio.wait_for(received.get(), timeout=10)
        # --8<-- [start:duplicate]
        again = await pubsub.publish(
            "order.created", Order(order_id="ORD-1", total=25.0), event_id=result.event_id
        )
        # again.duplicate is True and again.seq == result.seq: the server stored it once
        # --8<-- [end:duplicate]
    finally:
        await broker.stop()
    return Outcome(
        published=result,
        duplicate=again,
        order=order,
        meta=meta,
        envelope=envelope,
    )


async def _run() -> None:
    async with EmbeddedNatsServer() as server:
        outcome = await main(server.url)
    meta = outcome.meta
    print(f"handled {outcome.order} from {meta.subject}")
    print(f"  event_id={meta.event_id} stream={meta.stream} seq={meta.stream_seq}")
    print(f"  deliveries={meta.deliveries} correlation_id={meta.correlation_id}")
    print(f"second publish with the same event id: duplicate={outcome.duplicate.duplicate}")


if __name__ == "__main__":
    asyncio.run(_run())
