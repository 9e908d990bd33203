"""Two services with routers, dependency injection and a handler that answers with an event.

``python examples/e03_two_services_routers.py`` runs it on a throw-away ``nats-server``.

- ``shop`` publishes ``order.placed`` and keeps an audit log of its own orders;
- ``billing`` consumes ``shop``'s ``order.placed``, computes the tax with an injected
  ``TaxTable`` and returns an ``Invoice``, which is published as ``invoice.created``;
- ``shop`` consumes ``billing``'s ``invoice.created``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from faststream import Depends
from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import EventMetadata, NatsPubsub, PublishResult
from faststream_natspubsub.testing import EmbeddedNatsServer


class OrderPlaced(BaseModel):
    order_id: str
    amount: float
    country: str


class Invoice(BaseModel):
    order_id: str
    net: float
    tax: float
    total: float


# --8<-- [start:billing]
class TaxTable:
    """A dependency; in a real service it would read a database or a config file."""

    def __init__(self) -> None:
        self.rates = {"de": 0.19, "fr": 0.20}

    def rate(self, country: str) -> float:
        return self.rates.get(country, 0.0)


def get_tax_table() -> TaxTable:
    return TaxTable()


def billing_service(url: str) -> NatsBroker:
    broker = NatsBroker(url, logger=None)
    pubsub = NatsPubsub(broker, env="dev", app="billing")
    router = pubsub.router()

    @router.subscriber("order.placed", app="shop")  # dev.shop.order.placed
    @router.publisher("invoice.created")  # dev.billing.invoice.created
    async def bill(
        order: OrderPlaced, taxes: Annotated[TaxTable, Depends(get_tax_table)]
    ) -> Invoice:
        tax = round(order.amount * taxes.rate(order.country), 2)
        return Invoice(order_id=order.order_id, net=order.amount, tax=tax, total=order.amount + tax)

    broker.include_router(router.nats)
    return broker


# --8<-- [end:billing]


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    placed: list[PublishResult]
    invoices: list[tuple[Invoice, EventMetadata]]
    audit_log: list[str]


# --8<-- [start:shop]
class Shop:
    def __init__(self, url: str) -> None:
        self.broker = NatsBroker(url, logger=None)
        self.pubsub = NatsPubsub(self.broker, env="dev", app="shop")
        self.audit_log: asyncio.Queue[str] = asyncio.Queue()
        self.invoices: asyncio.Queue[tuple[Invoice, EventMetadata]] = asyncio.Queue()
        router = self.pubsub.router()

        @router.subscriber("order.placed")  # its own topic: a second consumer (fan-out)
        async def audit(order: OrderPlaced) -> None:
            await self.audit_log.put(order.order_id)

        @router.subscriber("invoice.created", app="billing")  # dev.billing.invoice.created
        async def on_invoice(invoice: Invoice, meta: EventMetadata) -> None:
            await self.invoices.put((invoice, meta))

        self.broker.include_router(router.nats)

    async def place(self, order: OrderPlaced, request_id: str) -> PublishResult:
        return await self.pubsub.publish(
            "order.placed", order, metadata={"correlation_id": request_id}
        )


# --8<-- [end:shop]


async def main(url: str) -> Outcome:
    """Start both services, place two orders and collect the invoices."""
    billing = billing_service(url)
    shop = Shop(url)
    # Start order does not matter: each app declares the streams it reads from.
    await billing.start()
    await shop.broker.start()
    try:
        placed = [
            await shop.place(OrderPlaced(order_id="ORD-1", amount=100.0, country="de"), "req-1"),
            await shop.place(OrderPlaced(order_id="ORD-2", amount=50.0, country="us"), "req-2"),
        ]
        invoices = [await asyncio.wait_for(shop.invoices.get(), timeout=10) for _ in placed]
        audited = [await asyncio.wait_for(shop.audit_log.get(), timeout=10) for _ in placed]
    finally:
        await shop.broker.stop()
        await billing.stop()
    return Outcome(placed=placed, invoices=invoices, audit_log=audited)


async def _run() -> None:
    async with EmbeddedNatsServer() as server:
        outcome = await main(server.url)
    for invoice, meta in outcome.invoices:
        print(f"{invoice} from {meta.app_name}")
        print(f"  correlation_id={meta.correlation_id} causation_id={meta.causation_id}")
    print("shop's audit log:", outcome.audit_log)


if __name__ == "__main__":
    asyncio.run(_run())
