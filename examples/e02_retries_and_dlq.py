"""Retries with backoff, dead-lettering, and reading and replaying the dead-letter queue.

``python examples/e02_retries_and_dlq.py`` runs it on a throw-away ``nats-server``.

- ``PAY-1`` is charged at once;
- ``PAY-2`` fails once with a network error and is charged on its second delivery;
- ``PAY-3`` is in a currency the service does not accept yet: ``PermanentError``, no retry;
- ``PAY-4`` times out on every attempt and is dead-lettered after ``max_attempts``.

Then the service learns the currency and ``PAY-3`` is replayed from the dead-letter queue.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import (
    DeadLetterQueue,
    DeadLetterRecord,
    EventMetadata,
    NatsPubsub,
    PermanentError,
    PublishResult,
    RetryPolicy,
)
from faststream_natspubsub.testing import EmbeddedNatsServer


class Payment(BaseModel):
    payment_id: str
    amount: float
    currency: str


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    attempts: dict[str, list[int]]
    """Deliveries seen by the handler, per payment."""
    charged: list[str]
    dead_letters: list[DeadLetterRecord]
    """The DLQ before the replay."""
    replayed: PublishResult
    left_after_replay: list[DeadLetterRecord]


async def main(url: str) -> Outcome:
    """Run the four payments, then replay the dead-lettered one that can now be charged."""
    broker = NatsBroker(url, logger=None)
    # --8<-- [start:policy]
    pubsub = NatsPubsub(
        broker,
        env="dev",
        app="payments",
        # Three deliveries at most, 0.2 s after the first failure and 0.4 s after the second.
        retry=RetryPolicy(max_attempts=3, backoff=(0.2, 0.4)),
    )
    # --8<-- [end:policy]
    accepted_currencies = {"EUR"}
    attempts: defaultdict[str, list[int]] = defaultdict(list)
    charged: list[str] = []

    # --8<-- [start:handler]
    @pubsub.subscriber("payment.requested")
    async def charge(payment: Payment, meta: EventMetadata) -> None:
        attempts[payment.payment_id].append(meta.deliveries)
        if payment.currency not in accepted_currencies:
            raise PermanentError(f"currency {payment.currency} is not supported")  # DLQ now
        if payment.payment_id == "PAY-2" and meta.deliveries == 1:
            raise ConnectionError("card processor unreachable")  # retried after 0.2 s
        if payment.payment_id == "PAY-4":
            raise TimeoutError("card processor timed out")  # retried, then dead-lettered
        charged.append(payment.payment_id)

    # --8<-- [end:handler]

    await broker.start()
    try:
        published: dict[str, PublishResult] = {}
        for number, currency in ((1, "EUR"), (2, "EUR"), (3, "CHF"), (4, "EUR")):
            payment = Payment(payment_id=f"PAY-{number}", amount=10.0 * number, currency=currency)
            published[payment.payment_id] = await pubsub.publish("payment.requested", payment)
        # --8<-- [start:dlq]
        dlq = DeadLetterQueue(broker.connection.jetstream(), env="dev", app="payments")
        # --8<-- [end:dlq]
        await _eventually(lambda: _has_records(dlq, 2))
        # --8<-- [start:list]
        dead_letters = await dlq.list(topic="payment.requested")
        for record in dead_letters:
            print(
                f"{record.event_id} {record.reason} after {record.attempts} deliveries: "
                f"{record.error_type}: {record.error_message}"
            )
        # --8<-- [end:list]

        # --8<-- [start:replay]
        accepted_currencies.add("CHF")  # the fix is deployed
        record = await dlq.get(published["PAY-3"].event_id)
        replayed = await dlq.replay(record)  # to record.original_subject; record removed
        # --8<-- [end:replay]
        await _eventually(lambda: _is_charged(charged, "PAY-3"))
        left = await dlq.list()
    finally:
        await broker.stop()
    return Outcome(
        attempts=dict(attempts),
        charged=charged,
        dead_letters=dead_letters,
        replayed=replayed,
        left_after_replay=left,
    )


async def _has_records(dlq: DeadLetterQueue, expected: int) -> bool:
    return len(await dlq.list()) >= expected


async def _is_charged(charged: list[str], payment_id: str) -> bool:
    return payment_id in charged


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Poll ``check`` until it is true, or raise ``TimeoutError`` at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError("the scenario did not finish in time")
        await asyncio.sleep(0.05)


async def _run() -> None:
    # Each retry and dead-lettering is logged with its traceback; keep this output short.
    async with EmbeddedNatsServer() as server:
        outcome = await main(server.url)
    print("deliveries per payment:", outcome.attempts)
    print("charged:", outcome.charged)
    for record in outcome.dead_letters:
        print(f"dead-lettered {record.event_id}: {record.reason} ({record.error_message})")


if __name__ == "__main__":
    asyncio.run(_run())
