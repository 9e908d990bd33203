"""Two apps, two codecs: ``orders`` writes protobuf envelopes, ``shipping`` writes JSON.

Each reads the other's events by their ``content-type``. ``orders_pb2`` is generated from
``examples/orders.proto`` (``scripts/generate-protos.sh``). Needs the ``protobuf`` extra;
``python examples/e13_codecs.py`` runs it on a throw-away ``nats-server``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orders_pb2
from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import EventMetadata, NatsPubsub, ProtobufCodec, ProtobufMessage
from faststream_natspubsub.testing import EmbeddedNatsServer


# --8<-- [start:models]
class Order(BaseModel):  # the JSON side's view of orders.v1.OrderPlaced
    order_id: str
    customer_id: str
    quantity: int
    total: float


class Shipped(BaseModel):
    order_id: str
    carrier: str


# --8<-- [end:models]


@dataclass
class Outcome:
    """What each handler saw, for the tests."""

    shipped_orders: list[Order] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    audited: list[orders_pb2.OrderPlaced] = field(default_factory=list)
    delivered: list[Shipped] = field(default_factory=list)


async def main(url: str) -> Outcome:
    """Place one order on the protobuf app; the JSON app ships it and answers in JSON."""
    outcome = Outcome()
    done, audited = asyncio.Event(), asyncio.Event()
    # --8<-- [start:apps]
    orders_broker = NatsBroker(url, logger=None)
    orders = NatsPubsub(orders_broker, env="dev", app="orders", codec=ProtobufCodec())
    shipping_broker = NatsBroker(url, logger=None)
    shipping = NatsPubsub(shipping_broker, env="dev", app="shipping")  # JSON, the default

    @shipping.subscriber("order.placed", app="orders")
    async def ship(order: Order, meta: EventMetadata) -> None:
        # A protobuf envelope, a protobuf message inside: this handler gets its pydantic model
        outcome.shipped_orders.append(order)
        outcome.content_types.append(meta.headers["content-type"])
        await shipping.publish("order.shipped", Shipped(order_id=order.order_id, carrier="DHL"))

    @orders.subscriber("order.placed")
    async def audit(order: ProtobufMessage[orders_pb2.OrderPlaced]) -> None:
        # Typed with the generated class: the protobuf message itself
        outcome.audited.append(order)
        audited.set()

    @orders.subscriber("order.shipped", app="shipping")
    async def delivered(event: Shipped, meta: EventMetadata) -> None:
        # A JSON envelope from the JSON app, read by the protobuf app
        outcome.delivered.append(event)
        outcome.content_types.append(meta.headers["content-type"])
        done.set()

    # --8<-- [end:apps]

    await orders_broker.start()
    await shipping_broker.start()
    try:
        # --8<-- [start:publish]
        await orders.publish(
            "order.placed",
            orders_pb2.OrderPlaced(order_id="ORD-1", customer_id="C-7", quantity=2, total=25.0),
        )
        # --8<-- [end:publish]
        await asyncio.wait_for(asyncio.gather(done.wait(), audited.wait()), timeout=10)
    finally:
        await shipping_broker.stop()
        await orders_broker.stop()
    return outcome


async def _run() -> None:
    async with EmbeddedNatsServer() as server:
        outcome = await main(server.url)
    print(f"shipping (JSON app) got {outcome.shipped_orders[0]}")
    print(f"orders (protobuf app) audited {type(outcome.audited[0]).__name__}")
    print(f"orders got back {outcome.delivered[0]}")
    print(f"content types seen: {outcome.content_types}")


if __name__ == "__main__":
    asyncio.run(_run())
