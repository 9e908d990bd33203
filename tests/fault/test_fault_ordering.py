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


@pytest.mark.slow
async def test_after_a_crash_a_retried_event_still_comes_before_the_later_events_of_its_key(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    # Given an ordered consumer (by the "key" field, 4 workers, ack_wait 2 s) and key A's
    # first event failing once with a 4 s retry delay, so A's later events wait behind it
    consumer = ConsumerProcess(
        [server.url], tmp_path, "c", inbox="none", workers=4, ack_wait=2.0, order_by="key"
    )
    async with publisher([server.url]) as pubsub:
        try:
            history = History()
            first_a = await history.publish(pubsub, "later", delay=4.0, key="A")
            later_a = [await history.publish(pubsub, key="A") for _ in range(5)]
            events_b = [await history.publish(pubsub, key="B") for _ in range(5)]
            await consumer.start()
            await wait_until(lambda: set(events_b) <= set(consumer.effects()), message="key B")
            assert not set(later_a) & set(consumer.effects())  # held behind the retry
            # When the consumer is SIGKILLed while A is held, and another one starts: A's
            # later events come back after ack_wait, before the retried one's delay is over
            await consumer.kill()
            await consumer.start()
            verdict = await settle(pubsub, history, [consumer])
        finally:
            await stop_all([consumer])

    # Then the new consumer still handled A in publish order: it waited, at start, for the
    # events its consumer had pending, and put them back in stream order
    verdict.check_at_least_once("ordering by key across a crash")
    effects = consumer.effects()
    assert [e for e in effects if e in {first_a, *later_a}] == [first_a, *later_a]
    assert [e for e in effects if e in events_b] == events_b
