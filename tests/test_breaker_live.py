"""The circuit breaker against a real server: an outage costs no attempts and no dead letters."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from support import new_broker, running, wait_until

from faststream_natspubsub import (
    CircuitBreaker,
    EventMetadata,
    HealthStatus,
    NatsPubsub,
    RetryPolicy,
)
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

ENV, APP, TOPIC = "test", "breaker", "job.run"
STREAM, DLQ = "TEST_BREAKER", "DLQ_TEST_BREAKER"
DURABLE = consumer_name(APP, f"{ENV}.{APP}.{TOPIC}")
COMPONENT = f"consumer:{STREAM}/{DURABLE}"


class DependencyDown(ConnectionError):
    """What the handler raises while its dependency is down."""


@asynccontextmanager
async def publisher(server: EmbeddedNatsServer) -> AsyncIterator[NatsPubsub]:
    """The app's streams, declared, and a facade to publish with (no subscriber)."""
    pubsub = NatsPubsub(new_broker(server), env=ENV, app=APP)
    async with running(pubsub.broker):
        yield pubsub


async def _publish(pubsub: NatsPubsub, count: int, start: int = 0) -> list[str]:
    results = await pubsub.publish_many([(TOPIC, {"n": n}) for n in range(start, start + count)])
    assert all(result.ok for result in results)
    return [result.event_id for result in results]


async def _dead_letters(pubsub: NatsPubsub) -> int:
    info = await pubsub.broker.connection.jetstream().stream_info(DLQ)
    return int(info.state.messages)


async def _idle(pubsub: NatsPubsub) -> bool:
    js = pubsub.broker.connection.jetstream()
    info = await js.consumer_info(STREAM, DURABLE)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def _breaker(pubsub: NatsPubsub) -> str:
    report = await pubsub.health()
    return str(report.components[COMPONENT].data["circuit_breaker"])


async def test_while_open_nothing_starts_and_one_probe_resumes_the_flow(
    server: EmbeddedNatsServer,
) -> None:
    # Given a subscriber whose breaker opens after 3 different events fail, for 1 s
    async with publisher(server) as pub:
        await _publish(pub, 20)
        consumer = NatsPubsub(new_broker(server), env=ENV, app=APP)
        up = False
        starts: list[tuple[float, int, bool]] = []
        handled: Counter[int] = Counter()

        @consumer.subscriber(
            TOPIC, circuit_breaker=CircuitBreaker(failures=3, cooldown=1.0, max_cooldown=1.0)
        )
        async def run(body: dict[str, Any], meta: EventMetadata) -> None:
            starts.append((time.monotonic(), body["n"], up))
            if not up:
                raise DependencyDown("the dependency is down")
            handled[body["n"]] += 1

        # When its dependency is down: three events fail and the breaker opens
        async with running(consumer.broker):
            await wait_until(lambda: len(starts) >= 3, message="three failures")
            opened_at = starts[2][0]
            assert await _breaker(consumer) == "open"
            report = await consumer.health()
            # Then nothing starts during the cooldown, and health() says degraded
            await asyncio.sleep(0.6)
            during_cooldown = len(starts)
            # The probe comes once the cooldown is over; it fails: open again
            await wait_until(lambda: len(starts) >= 4, timeout=5, message="the probe")
            probe_at = starts[3][0]
            up = True
            # After the next probe every event is handled
            await wait_until(lambda: len(handled) == 20, timeout=10, message="all handled")
            await wait_until(lambda: _idle(consumer), message="every event acked")
            closed = await _breaker(consumer)
            dead = await _dead_letters(consumer)

    assert during_cooldown == 3
    assert probe_at - opened_at >= 0.9
    assert report.components[COMPONENT].status is HealthStatus.DEGRADED
    assert "circuit breaker open (last: DependencyDown" in report.components[COMPONENT].detail
    # The events held while open ran again without a NAK: no event used a second delivery
    # beyond the three that failed before the breaker opened.
    assert sorted(handled) == list(range(20))
    assert set(handled.values()) == {1}
    assert closed == "closed"
    assert dead == 0


@pytest.mark.slow
async def test_a_20_s_outage_with_1000_events_flowing_dead_letters_none(
    server: EmbeddedNatsServer,
) -> None:
    # Given a subscriber with every default (retry policy, circuit breaker) whose handler
    # needs a dependency, and 1,000 events published at 100 a second
    consumer = NatsPubsub(new_broker(server), env=ENV, app=APP)
    up = True
    handled: Counter[str] = Counter()
    failures = 0

    @consumer.subscriber(TOPIC)
    async def run(body: dict[str, Any], meta: EventMetadata) -> None:
        nonlocal failures
        if not up:
            failures += 1
            raise DependencyDown("the dependency is down")
        handled[meta.event_id] += 1

    states: set[str] = set()
    async with running(consumer.broker):
        started = time.monotonic()

        async def publish() -> list[str]:
            ids: list[str] = []
            for start in range(0, 1000, 10):
                ids += await _publish(consumer, 10, start)
                await asyncio.sleep(0.1)
            return ids

        publishing = asyncio.create_task(publish())
        # When the dependency is down for 20 s, 1 s after the first events
        await asyncio.sleep(1.0)
        up = False
        outage_ends = time.monotonic() + 20.0
        while time.monotonic() < outage_ends:
            states.add(await _breaker(consumer))
            await asyncio.sleep(0.5)
        up = True
        published = await publishing
        # Then every event is handled once the dependency is back
        await wait_until(lambda: len(handled) == 1000, timeout=60, message="all handled")
        await wait_until(lambda: _idle(consumer), timeout=10, message="every event acked")
        took = time.monotonic() - started
        dead = await _dead_letters(consumer)

    logging.getLogger(__name__).warning(
        "outage test: %d handled, %d dead-lettered, %d failed attempts, %.1fs",
        len(handled),
        dead,
        failures,
        took,
    )
    assert set(handled) == set(published)
    assert set(handled.values()) == {1}
    assert dead == 0
    assert "open" in states
