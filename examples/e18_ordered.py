"""Handle each account's entries in order, several accounts at once, with a retry.

``python examples/e18_ordered.py`` runs it on a throw-away ``nats-server``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import EventMetadata, NatsPubsub, RetryLater
from faststream_natspubsub.testing import EmbeddedNatsServer


class Entry(BaseModel):
    account: str
    n: int
    amount: float


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    by_account: dict[str, list[int]]
    attempts: dict[tuple[str, int], int]


async def main(url: str) -> Outcome:
    """Post 30 entries on 3 accounts; account B's first entry fails once."""
    broker = NatsBroker(url, logger=None)
    pubsub = NatsPubsub(broker, env="dev", app="ledger")
    by_account: dict[str, list[int]] = defaultdict(list)
    attempts: dict[tuple[str, int], int] = {}
    all_posted = asyncio.Event()
    total = 30

    # --8<-- [start:app]
    @pubsub.subscriber(
        "entry.posted",
        max_workers=8,  # up to 8 entries at once...
        order_by=lambda message: message["account"],  # ...but one at a time per account
    )
    async def post(entry: Entry, meta: EventMetadata) -> None:
        attempts[(entry.account, entry.n)] = meta.deliveries
        if entry.account == "B" and entry.n == 1 and meta.deliveries == 1:
            # Retried in 0.3 s; B's later entries wait for it, A and C go on
            raise RetryLater(delay=0.3)
        await asyncio.sleep(0.01)  # the I/O of posting the entry
        by_account[entry.account].append(entry.n)
        if sum(map(len, by_account.values())) == total:
            all_posted.set()

    # --8<-- [end:app]

    await broker.start()
    try:
        entries = [
            Entry(account=account, n=n, amount=10.0)
            for n in range(1, 11)
            for account in ("A", "B", "C")
        ]
        await pubsub.publish_many([("entry.posted", entry) for entry in entries])
        await asyncio.wait_for(all_posted.wait(), timeout=20)
    finally:
        await broker.stop()
    return Outcome(by_account=dict(by_account), attempts=attempts)


async def _run() -> None:
    async with EmbeddedNatsServer() as server:
        outcome = await main(server.url)
    for account, numbers in sorted(outcome.by_account.items()):
        print(f"account {account}: entries posted in order {numbers}")
    print(f"B's first entry took {outcome.attempts[('B', 1)]} deliveries")


if __name__ == "__main__":
    asyncio.run(_run())
