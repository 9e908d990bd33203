"""Ride out a payment gateway outage: the circuit breaker pauses the subscriber, no DLQ.

``python examples/e19_circuit_breaker.py`` runs it on a throw-away ``nats-server``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import CircuitBreaker, NatsPubsub
from faststream_natspubsub.testing import EmbeddedNatsServer


class Order(BaseModel):
    order_id: int


class Gateway:
    """A stand-in for the payment provider's API."""

    def __init__(self) -> None:
        self.up = True

    async def charge(self, order_id: int) -> None:
        if not self.up:
            raise ConnectionError("payment gateway unreachable")


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    charged: Counter[int]
    breaker_states: set[str]
    dead_letters: int


async def main(url: str) -> Outcome:
    """Charge 30 orders; the gateway is down for 2 s in the middle."""
    broker = NatsBroker(url, logger=None)
    # --8<-- [start:app]
    pubsub = NatsPubsub(
        broker,
        env="dev",
        app="payments",
        # The default is CircuitBreaker(); these settings make the example quick.
        circuit_breaker=CircuitBreaker(failures=3, cooldown=0.5, max_cooldown=2.0),
    )
    gateway = Gateway()
    charged: Counter[int] = Counter()

    @pubsub.subscriber("order.placed")
    async def charge(order: Order) -> None:
        await gateway.charge(order.order_id)  # raises while the gateway is down
        charged[order.order_id] += 1

    # --8<-- [end:app]
    states: set[str] = set()
    await broker.start()
    try:
        await pubsub.publish_many([("order.placed", Order(order_id=n)) for n in range(10)])
        gateway.up = False
        await pubsub.publish_many([("order.placed", Order(order_id=n)) for n in range(10, 30)])
        for _ in range(20):  # 2 s of outage, watched the way a probe would
            # --8<-- [start:health]
            report = await pubsub.health()
            consumer = next(c for name, c in report.components.items() if "consumer:" in name)
            states.add(consumer.data["circuit_breaker"])  # closed, open or half_open
            # --8<-- [end:health]
            await asyncio.sleep(0.1)
        gateway.up = True
        for _ in range(200):
            if len(charged) == 30:
                break
            await asyncio.sleep(0.05)
        info = await broker.connection.jetstream().stream_info("DLQ_DEV_PAYMENTS")
    finally:
        await broker.stop()
    return Outcome(charged=charged, breaker_states=states, dead_letters=info.state.messages)


async def _run() -> None:
    async with EmbeddedNatsServer() as server:
        outcome = await main(server.url)
    print(f"charged {len(outcome.charged)} orders, each once: {set(outcome.charged.values())}")
    print(f"breaker states seen during the outage: {sorted(outcome.breaker_states)}")
    print(f"dead letters: {outcome.dead_letters}")


if __name__ == "__main__":
    asyncio.run(_run())
