"""Batch consumption: one handler call for many events, one outcome per event.

``python examples/e09_batch.py`` runs it on a throw-away ``nats-server``.

``inventory`` starts with a backlog of stock counts and saves them a batch at a time:

- ``A-1`` and ``D-4`` are saved at once;
- ``B-2`` fails once with a database error: only that item is retried;
- ``C-3`` has a negative quantity: ``PermanentError``, dead-lettered;
- ``E-5`` does not validate: dead-lettered before the handler runs, which never sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import (
    BatchFailure,
    BatchMetadata,
    BatchSettings,
    DeadLetterQueue,
    DeadLetterRecord,
    NatsPubsub,
    PermanentError,
    RetryPolicy,
)
from faststream_natspubsub.testing import EmbeddedNatsServer


# --8<-- [start:model]
class StockCount(BaseModel):
    sku: str
    quantity: int


# --8<-- [end:model]


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    batches: list[list[tuple[str, int]]]
    """Each handler call: (sku, delivery) of every item it got."""
    saved: list[str]
    dead_letters: list[DeadLetterRecord]


async def main(url: str) -> Outcome:
    """Start the service on a backlog of five stock counts and let it work through them."""
    broker = NatsBroker(url, logger=None)
    pubsub = NatsPubsub(broker, env="dev", app="inventory", retry=RetryPolicy(backoff=(0.2,)))
    batches: list[list[tuple[str, int]]] = []
    saved: list[str] = []

    # --8<-- [start:handler]
    @pubsub.subscriber("stock.counted", batch=BatchSettings(max_messages=100, max_wait=0.5))
    async def save(counts: list[StockCount], metas: BatchMetadata) -> None:
        batches.append([(c.sku, m.deliveries) for c, m in zip(counts, metas, strict=True)])
        failures: dict[int | str, BaseException] = {}
        rows: list[str] = []
        for index, (count, meta) in enumerate(zip(counts, metas, strict=True)):
            if count.quantity < 0:
                failures[meta.event_id] = PermanentError("negative stock")  # by event id
            elif count.sku == "B-2" and meta.deliveries == 1:
                failures[index] = ConnectionError("warehouse database busy")  # by position
            else:
                rows.append(count.sku)
        saved.extend(rows)  # one write for the whole batch
        if failures:
            raise BatchFailure(failures)  # the other items are acknowledged

    # --8<-- [end:handler]

    # --8<-- [start:backlog]
    await broker.connect()
    await pubsub.declare_topology()  # the stream and the consumer, before anything consumes
    await pubsub.publish_many(
        [
            ("stock.counted", StockCount(sku="A-1", quantity=10)),
            ("stock.counted", StockCount(sku="B-2", quantity=3)),
            ("stock.counted", StockCount(sku="C-3", quantity=-1)),
            ("stock.counted", StockCount(sku="D-4", quantity=7)),
            ("stock.counted", {"sku": "E-5", "quantity": "many"}),  # invalid
        ]
    )
    await broker.start()  # the first fetch takes the whole backlog
    # --8<-- [end:backlog]
    try:
        dlq = DeadLetterQueue(broker.connection.jetstream(), env="dev", app="inventory")
        await _eventually(lambda: _done(dlq, saved))
        dead_letters = await dlq.list()
    finally:
        await broker.stop()
    return Outcome(batches=batches, saved=saved, dead_letters=dead_letters)


async def _done(dlq: DeadLetterQueue, saved: list[str]) -> bool:
    return "B-2" in saved and len(await dlq.list()) >= 2


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
    for number, batch in enumerate(outcome.batches, start=1):
        print(f"batch {number}: {batch}")
    print("saved:", outcome.saved)
    for record in outcome.dead_letters:
        print(f"dead-lettered {record.reason}: {record.error_type}: {record.error_message}")


if __name__ == "__main__":
    asyncio.run(_run())
