"""Retries and dead letters in memory, with ``TestNatsPubsub``: no server, no waiting.

Run the tests with ``pytest examples/e10_in_memory_failures.py`` (they need
``pytest-asyncio``), or the five-attempt scenario with
``python examples/e10_in_memory_failures.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import (
    DeadLetterRecord,
    EventMetadata,
    NatsPubsub,
    PermanentError,
    PublishResult,
)
from faststream_natspubsub.testing import Redelivery, TestNatsPubsub


# --8<-- [start:app]
# payments/app.py: the service under test
class Payment(BaseModel):
    payment_id: str
    amount: float


class CardProcessor:
    """The payment provider's client; the tests make it fail."""

    def __init__(self) -> None:
        self.failures_left = 0
        self.charged: list[str] = []

    async def charge(self, payment: Payment) -> None:
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("card processor unreachable")
        self.charged.append(payment.payment_id)


broker = NatsBroker("nats://127.0.0.1:4222", logger=None)
pubsub = NatsPubsub(broker, env="test", app="payments")  # default RetryPolicy: 5 attempts
processor = CardProcessor()


@pubsub.subscriber("payment.requested")
async def charge(payment: Payment, meta: EventMetadata) -> None:
    if payment.amount <= 0:
        raise PermanentError(f"nothing to charge for {payment.payment_id}")
    await processor.charge(payment)


# --8<-- [end:app]


# --8<-- [start:tests]
@pytest.mark.asyncio
async def test_a_payment_is_charged_once_the_processor_recovers() -> None:
    processor.failures_left, processor.charged = 2, []
    async with TestNatsPubsub(pubsub) as tp:
        await pubsub.publish("payment.requested", Payment(payment_id="PAY-1", amount=10))

    assert processor.charged == ["PAY-1"]  # on the third delivery
    assert tp.delays == [1, 2]  # the policy's delays, recorded instead of slept
    assert tp.dead_letters == []


@pytest.mark.asyncio
async def test_a_payment_is_dead_lettered_after_five_attempts() -> None:
    processor.failures_left, processor.charged = 100, []
    async with TestNatsPubsub(pubsub) as tp:
        result = await pubsub.publish("payment.requested", Payment(payment_id="PAY-2", amount=10))

    assert tp.delays == [1, 2, 5, 10]  # four retries, then the DLQ
    assert [r.deliveries for r in tp.redeliveries] == [1, 2, 3, 4]
    [record] = tp.dead_letters
    assert (record.event_id, record.reason, record.attempts) == (
        result.event_id,
        "max_attempts_exceeded",
        5,
    )
    assert record.error_type == "ConnectionError"


@pytest.mark.asyncio
async def test_a_zero_amount_is_dead_lettered_without_a_retry() -> None:
    processor.failures_left, processor.charged = 0, []
    async with TestNatsPubsub(pubsub) as tp:
        await pubsub.publish("payment.requested", Payment(payment_id="PAY-3", amount=0))

    assert tp.delays == []
    assert [(r.reason, r.error_type) for r in tp.dead_letters] == [
        ("permanent_error", "PermanentError")
    ]


# --8<-- [end:tests]


@dataclass(frozen=True)
class Outcome:
    """What the five-attempt scenario saw, for the tests."""

    published: PublishResult
    delays: list[float]
    redeliveries: list[Redelivery]
    dead_letters: list[DeadLetterRecord]
    charged: list[str]


async def main(url: str = "nats://127.0.0.1:4222") -> Outcome:
    """A payment whose processor never answers; ``url`` is never used (no server).

    The redeliveries happen inside ``publish``: when it returns, the event is in the DLQ.
    """
    processor.failures_left, processor.charged = 100, []
    async with TestNatsPubsub(pubsub) as tp:
        published = await pubsub.publish(
            "payment.requested", Payment(payment_id="PAY-4", amount=25)
        )
    return Outcome(
        published=published,
        delays=tp.delays,
        redeliveries=tp.redeliveries,
        dead_letters=tp.dead_letters,
        charged=processor.charged,
    )


if __name__ == "__main__":
    # Every retry and the dead-lettering are logged with a traceback; keep this output short.
    outcome = asyncio.run(main())
    print("NAK delays:", outcome.delays)
    for record in outcome.dead_letters:
        print(f"dead-lettered {record.event_id}: {record.reason} after {record.attempts} attempts")
