"""Quick start: one service that publishes an event and handles it.

Start a JetStream server (``nats-server -js``), then ``faststream run quickstart:app``.
"""

from typing import Any

from faststream import FastStream
from faststream.nats import NatsBroker

from faststream_natspubsub import EventMetadata, NatsPubsub

broker = NatsBroker("nats://127.0.0.1:4222")
pubsub = NatsPubsub(broker, env="dev", app="orders")
app = FastStream(broker)


@pubsub.subscriber("order.created")  # subject dev.orders.order.created
async def on_created(order: dict[str, Any], meta: EventMetadata) -> None:
    print(f"order {order['order_id']}: event {meta.event_id}, delivery {meta.deliveries}")


@app.after_startup
async def place_order() -> None:
    await pubsub.publish("order.created", {"order_id": "ORD-1", "total": 25.0})
