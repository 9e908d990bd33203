"""Unit tests of a service's handlers in memory, with FastStream's ``TestNatsBroker``.

Nothing connects to NATS. Run the tests with ``pytest examples/e04_in_memory_testing.py``
(they need ``pytest-asyncio``), or all of them at once with
``python examples/e04_in_memory_testing.py``.
"""

from __future__ import annotations

import asyncio

import pytest
from faststream import FastStream
from faststream.nats import JStream, NatsBroker, TestNatsBroker
from pydantic import BaseModel

from faststream_natspubsub import (
    DeadLetterRecord,
    EventMetadata,
    NatsPubsub,
    OutgoingEvent,
    PermanentError,
    build_subject,
)


# --8<-- [start:app]
# shipping/app.py: the service under test
class Order(BaseModel):
    order_id: str
    address: str


class Shipment(BaseModel):
    order_id: str
    carrier: str
    reference: str | None


broker = NatsBroker("nats://127.0.0.1:4222", logger=None)
pubsub = NatsPubsub(broker, env="test", app="shipping")
app = FastStream(broker)
shipments = pubsub.publisher("shipment.created")


@pubsub.subscriber("order.paid", app="shop")
@shipments
async def ship(order: Order, meta: EventMetadata) -> Shipment:
    if not order.address:
        raise PermanentError(f"order {order.order_id} has no address")
    return Shipment(order_id=order.order_id, carrier="dhl", reference=meta.correlation_id)


# --8<-- [end:app]

# --8<-- [start:capture]
# tests/test_shipping.py: dead letters are published to the DLQ stream; in memory, a
# subscriber on that stream receives them.
dead_letters: list[DeadLetterRecord] = []


@broker.subscriber("dlq.test.shipping.>", stream=JStream("DLQ_TEST_SHIPPING", declare=False))
async def capture_dead_letter(record: DeadLetterRecord) -> None:
    dead_letters.append(record)


ORDER_PAID = build_subject("test", "shop", "order.paid")  # another app's topic


# --8<-- [end:capture]


# --8<-- [start:tests]
@pytest.mark.asyncio
async def test_a_paid_order_is_shipped_with_its_correlation_id() -> None:
    async with TestNatsBroker(broker):
        event = OutgoingEvent(
            message=Order(order_id="ORD-1", address="1 Main St"),
            metadata={"correlation_id": "checkout-1"},
        )
        await broker.publish(event, ORDER_PAID)  # wrapped in the envelope, like on NATS

        ship.mock.assert_called_once_with({"order_id": "ORD-1", "address": "1 Main St"})
        shipments.mock.assert_called_once_with(
            {"order_id": "ORD-1", "carrier": "dhl", "reference": "checkout-1"}
        )


@pytest.mark.asyncio
async def test_an_order_without_address_is_dead_lettered() -> None:
    dead_letters.clear()
    async with TestNatsBroker(broker):
        await broker.publish(Order(order_id="ORD-2", address=""), ORDER_PAID)

        shipments.mock.assert_not_called()
    assert [(r.reason, r.error_type) for r in dead_letters] == [
        ("permanent_error", "PermanentError")
    ]
    assert dead_letters[0].envelope is not None
    assert dead_letters[0].envelope["message"]["order_id"] == "ORD-2"


@pytest.mark.asyncio
async def test_an_invalid_order_is_dead_lettered_as_a_validation_error() -> None:
    dead_letters.clear()
    async with TestNatsBroker(broker):
        await broker.publish({"order_id": "ORD-3"}, ORDER_PAID)  # no address

        shipments.mock.assert_not_called()
    assert [(r.reason, r.error_type) for r in dead_letters] == [
        ("permanent_error", "ValidationError")
    ]


# --8<-- [end:tests]


async def main(url: str = "nats://127.0.0.1:4222") -> list[str]:
    """Run the tests above without pytest; returns their names.

    ``url`` is never used: ``TestNatsBroker`` replaces the connection.
    """
    tests = (
        test_a_paid_order_is_shipped_with_its_correlation_id,
        test_an_order_without_address_is_dead_lettered,
        test_an_invalid_order_is_dead_lettered_as_a_validation_error,
    )
    for test in tests:
        await test()
    return [test.__name__ for test in tests]


if __name__ == "__main__":
    # No server needed: everything runs in memory. Dead-lettering is logged with its
    # traceback; keep this output short.
    for name in asyncio.run(main()):
        print("passed:", name)
