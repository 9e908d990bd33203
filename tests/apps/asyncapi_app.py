"""A FastStream app using the plugin, for `faststream docs gen`."""

from faststream import FastStream
from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import AsyncAPI, EventMetadata, NatsPubsub


class Order(BaseModel):
    order_id: str


broker = NatsBroker()
pubsub = NatsPubsub(broker, env="prod", app="payments")


@pubsub.subscriber("order.created", app="orders")
async def h(order: Order, meta: EventMetadata) -> None: ...


app = FastStream(broker, specification=AsyncAPI())
