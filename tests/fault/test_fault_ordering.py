"""Order of handling: kept by one worker in one process, given up by a retry."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.apps import publisher, settle
from harness.consumers import ConsumerProcess, stop_all
from harness.history import History
from support import wait_until

from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = [pytest.mark.fault, pytest.mark.nats]

EVENTS = 400


async def test_one_worker_handles_events_in_publish_order(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    consumer = ConsumerProcess([server.url], tmp_path, "c", inbox="none", workers=1)
    async with publisher([server.url]) as pubsub:
        try:
            await consumer.start()
            history = History()
            published = [await history.publish(pubsub) for _ in range(EVENTS)]
            verdict = await settle(pubsub, history, [consumer])
        finally:
            await stop_all([consumer])

    verdict.check("ordering, one worker")
    assert consumer.effects() == published


async def test_a_graceful_restart_keeps_the_publish_order(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    consumer = ConsumerProcess([server.url], tmp_path, "c", inbox="none", workers=1)
    async with publisher([server.url]) as pubsub:
        try:
            await consumer.start()
            history = History()
            published: list[str] = []
            for n in range(EVENTS):
                published.append(await history.publish(pubsub))
                if n == EVENTS // 2:
                    # When the consumer is stopped (SIGTERM) and started again mid-stream
                    await wait_until(lambda: len(consumer.effects()) > 10, message="progress")
                    assert await consumer.terminate() == 0
                    await consumer.start()
            verdict = await settle(pubsub, history, [consumer])
        finally:
            await stop_all([consumer])

    # Then every event was handled once and in publish order: what the stopping subscriber
    # had fetched ahead (or still received) was handed back at once and came back first
    verdict.check("ordering across a graceful restart")
    assert consumer.effects() == published
    assert all(d.deliveries <= 2 for d in consumer.deliveries())


async def test_a_retried_event_is_handled_after_events_published_later(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    # Given one worker and a first event that fails once (retried after 0.2 s)
    consumer = ConsumerProcess([server.url], tmp_path, "c", inbox="none", workers=1)
    async with publisher([server.url]) as pubsub:
        try:
            history = History()
            flaky = await history.publish(pubsub, "flaky")
            later = [await history.publish(pubsub) for _ in range(20)]
            await consumer.start()
            verdict = await settle(pubsub, history, [consumer])
        finally:
            await stop_all([consumer])

    # Then the later events kept their order, and the retried one came after some of them
    verdict.check("ordering with a retry")
    effects = consumer.effects()
    assert [e for e in effects if e != flaky] == later
    assert effects.index(flaky) > 0
