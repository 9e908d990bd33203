"""A modular monolith: two NatsPubsub apps on one broker, each with its own policy and DLQ.

Run it: ``python examples/e12_modular_monolith.py`` (starts a throw-away nats-server).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import (
    DeadLetterQueue,
    EventMetadata,
    NatsPubsub,
    PermanentError,
    RetryPolicy,
)
from faststream_natspubsub.testing import EmbeddedNatsServer


class OrderPlaced(BaseModel):
    order_id: str
    amount: float


class Invoice(BaseModel):
    order_id: str
    total: float


@dataclass
class Seen:
    """What the modules did, for the tests."""

    invoices: list[tuple[Invoice, EventMetadata]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


# --8<-- [start:apps]
def create_monolith(broker: NatsBroker, seen: Seen) -> tuple[NatsPubsub, NatsPubsub]:
    shop = NatsPubsub(broker, env="dev", app="shop")
    billing = NatsPubsub(
        broker, env="dev", app="billing", retry=RetryPolicy(max_attempts=3, backoff=(0.1,))
    )

    @billing.subscriber("order.placed", app="shop")  # dev.shop.order.placed
    @billing.publisher("invoice.created")  # wrapped by billing, once
    async def bill(order: OrderPlaced) -> Invoice:
        if order.amount <= 0:
            raise PermanentError("nothing to bill")  # into billing's DLQ, not shop's
        return Invoice(order_id=order.order_id, total=round(order.amount * 1.2, 2))

    @shop.subscriber("invoice.created", app="billing")
    async def on_invoice(invoice: Invoice, meta: EventMetadata) -> None:
        seen.invoices.append((invoice, meta))

    return shop, billing


# --8<-- [end:apps]


async def main(url: str) -> Seen:
    seen = Seen()
    broker = NatsBroker(url, logger=None)
    shop, billing = create_monolith(broker, seen)
    await broker.start()
    try:
        await shop.publish(
            "order.placed", OrderPlaced(order_id="ORD-1", amount=10), correlation_id="c-1"
        )
        await shop.publish("order.placed", OrderPlaced(order_id="ORD-2", amount=0))
        for _ in range(200):
            records = await _dead_letters(billing)
            if seen.invoices and records:
                seen.refused = records
                break
            await asyncio.sleep(0.05)
    finally:
        await broker.stop()
    return seen


async def _dead_letters(billing: NatsPubsub) -> list[str]:
    dlq = DeadLetterQueue(billing.broker.connection.jetstream(), env="dev", app="billing")
    return [record.reason for record in await dlq.list()]


if __name__ == "__main__":

    async def _run() -> None:
        async with EmbeddedNatsServer() as server:
            seen = await main(server.url)
        for invoice, meta in seen.invoices:
            print(invoice, "from", meta.app_name, "correlation", meta.correlation_id)
        print("billing's dead letters:", seen.refused)

    asyncio.run(_run())
