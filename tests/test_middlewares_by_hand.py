"""The middleware classes compose by hand on a plain NatsBroker, without the facade."""

from __future__ import annotations

from typing import Any

import nats
import pytest
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from support import running, wait_until

from faststream_natspubsub import (
    AckHeartbeatMiddleware,
    EnvelopeMiddleware,
    EventMetadata,
    FailureMiddleware,
    RetryPolicy,
)
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats


async def test_failure_heartbeat_and_envelope_work_without_the_facade(
    server: EmbeddedNatsServer,
) -> None:
    # Given a plain broker with the three middlewares, outermost first
    broker = NatsBroker(
        server.url,
        logger=None,
        middlewares=[
            FailureMiddleware(env="hand", retry=RetryPolicy(backoff=(0.2,))),
            AckHeartbeatMiddleware(),
            EnvelopeMiddleware(env="hand", app="orders"),
        ],
    )
    nc = await nats.connect(server.url)
    await nc.jetstream().add_stream(name="HAND", subjects=["hand.orders.>"])
    await nc.close()
    seen: list[tuple[dict[str, Any], int]] = []

    @broker.subscriber(
        "hand.orders.order.created",
        stream=JStream("HAND", declare=False),
        durable="by-hand",
        pull_sub=PullSub(batch_size=1, timeout=1.0),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def handle(body: dict[str, Any], meta: EventMetadata) -> None:
        seen.append((body, meta.deliveries))
        if meta.deliveries == 1:
            raise ConnectionError("flaky")

    async with running(broker):
        # When a message is published through the broker, it is wrapped in the envelope
        ack = await broker.publish({"id": 1}, "hand.orders.order.created", stream="HAND")
        await wait_until(lambda: len(seen) == 2, message="the retry")

    # Then the handler got the unwrapped message, and the failure was retried with a delay
    assert ack.seq == 1
    assert seen == [({"id": 1}, 1), ({"id": 1}, 2)]
