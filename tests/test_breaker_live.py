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


async def _is_open(pubsub: NatsPubsub) -> bool:
    return await _breaker(pubsub) == "open"


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


async def test_a_poison_event_alone_is_dead_lettered_without_opening_the_breaker(
    server: EmbeddedNatsServer,
) -> None:
    # Given a breaker that opens after 2 different events fail, and quick retries
    async with publisher(server) as pub:
        consumer = NatsPubsub(
            new_broker(server),
            env=ENV,
            app=APP,
            retry=RetryPolicy(max_attempts=3, backoff=(0.05,)),
            circuit_breaker=CircuitBreaker(failures=2, cooldown=30.0),
        )
        attempts: Counter[int] = Counter()
        states: set[str] = set()

        @consumer.subscriber(TOPIC)
        async def run(body: dict[str, Any]) -> None:
            attempts[body["n"]] += 1
            states.add(await _breaker(consumer))
            if body["n"] < 0 or body["n"] >= 100:
                raise DependencyDown("this event always fails")

        async with running(consumer.broker):
            # When one poison event fails all its attempts while good events flow
            await _publish(pub, 1, start=-1)
            await _publish(pub, 5)
            await wait_until(lambda: _dead_letters(consumer), message="the poison dead-lettered")
            await wait_until(lambda: _idle(consumer), message="every event settled")
            after_poison = await _breaker(consumer)
            # (while another failing event, a second different one in a row, opens it)
            await _publish(pub, 1, start=100)
            await wait_until(lambda: attempts[100] >= 1, message="another failing event")
            await wait_until(lambda: _is_open(consumer), message="the breaker opens")

    # Then the poison used its 3 attempts and went to the DLQ; the breaker stayed closed
    assert attempts[-1] == 3
    assert [attempts[n] for n in range(5)] == [1] * 5
    assert states == {"closed"}
    assert after_poison == "closed"


async def test_a_graceful_stop_while_open_hands_the_held_events_back_at_once(
    server: EmbeddedNatsServer,
) -> None:
    # Given an open breaker (a 30 s cooldown) holding the events it fetched
    async with publisher(server) as pub:
        published = await _publish(pub, 10)
        failing = NatsPubsub(
            new_broker(server),
            env=ENV,
            app=APP,
            circuit_breaker=CircuitBreaker(failures=2, cooldown=30.0, max_cooldown=30.0),
        )
        tried: list[str] = []

        @failing.subscriber(TOPIC)
        async def fail(body: dict[str, Any], meta: EventMetadata) -> None:
            tried.append(meta.event_id)
            raise DependencyDown("the dependency is down")

        async with running(failing.broker):
            await wait_until(lambda: len(tried) >= 2, message="the breaker opens")
            assert await _breaker(failing) == "open"
        stopped = time.monotonic()

        # When the app stops and a healthy instance takes over
        healthy = NatsPubsub(new_broker(server), env=ENV, app=APP)
        handled: dict[str, int] = {}

        @healthy.subscriber(TOPIC)
        async def handle(body: dict[str, Any], meta: EventMetadata) -> None:
            handled[meta.event_id] = meta.deliveries

        async with running(healthy.broker):
            await wait_until(lambda: len(handled) == 10, timeout=20, message="all handled")
            took = time.monotonic() - stopped
            dead = await _dead_letters(healthy)

    # Then every event comes back within seconds (not after ack_wait or the cooldown), the
    # held ones with one more delivery (the stop's NAK), none dead-lettered
    assert len(tried) == 2
    assert set(handled) == set(published)
    assert took < 5.0
    assert handled[tried[1]] == 2  # held, then handed back by the stop
    assert dead == 0


@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_with_workers_and_keys_nothing_starts_while_open_and_each_key_keeps_its_order(
    server: EmbeddedNatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an ordered subscriber with 4 workers whose breaker opens after 3 failures for 1 s,
    # and 5 events of each of 4 keys
    async with publisher(server) as pub:
        results = await pub.publish_many([(TOPIC, {"n": n, "key": f"k{n % 4}"}) for n in range(20)])
        assert all(result.ok for result in results)
        consumer = NatsPubsub(new_broker(server), env=ENV, app=APP)
        up = False
        starts: list[tuple[float, int]] = []
        done: dict[str, list[int]] = {f"k{k}": [] for k in range(4)}

        @consumer.subscriber(
            TOPIC,
            max_workers=4,
            order_by=lambda message: message["key"],
            circuit_breaker=CircuitBreaker(failures=3, cooldown=1.0, max_cooldown=1.0),
        )
        async def run(body: dict[str, Any]) -> None:
            starts.append((time.time(), body["n"]))
            await asyncio.sleep(0.1)
            if not up:
                raise DependencyDown("the dependency is down")
            done[body["key"]].append(body["n"])

        # When the dependency is down until the breaker has opened twice
        with caplog.at_level(logging.INFO, logger="faststream_natspubsub.breaker"):
            async with running(consumer.broker):
                await wait_until(
                    lambda: any("probe failed" in r.getMessage() for r in caplog.records),
                    message="a failed probe",
                )
                up = True
                await wait_until(lambda: sum(map(len, done.values())) == 20, message="all handled")
                await wait_until(lambda: _idle(consumer), message="every event acked")
                dead = await _dead_letters(consumer)

    # Then no handler started within a cooldown after the breaker opened (running ones
    # finished), and every key's events ran in their order
    opened = next(r.created for r in caplog.records if "opened" in r.getMessage())
    assert [n for at, n in starts if opened + 0.01 < at < opened + 0.9] == []
    assert done == {key: sorted(ns) for key, ns in done.items()}
    assert dead == 0


@pytest.mark.slow
async def test_with_the_kv_inbox_held_events_run_again_and_take_effect_once(
    server: EmbeddedNatsServer,
) -> None:
    # Given a subscriber with the KV inbox whose breaker opens after 2 different events fail
    async with publisher(server) as pub:
        await _publish(pub, 10)
        consumer = NatsPubsub(
            new_broker(server),
            env=ENV,
            app=APP,
            inbox="kv",
            circuit_breaker=CircuitBreaker(failures=2, cooldown=0.5, max_cooldown=0.5),
        )
        up = False
        handled: Counter[int] = Counter()
        states: set[str] = set()

        @consumer.subscriber(TOPIC)
        async def run(body: dict[str, Any]) -> None:
            if not up:
                raise DependencyDown("the dependency is down")
            handled[body["n"]] += 1

        # When the dependency is down until the breaker opened, then comes back
        async with running(consumer.broker):
            await wait_until(lambda: _is_open(consumer), message="the breaker opens")
            states.add(await _breaker(consumer))
            up = True
            # Then the held events (their inbox claims released) run again, each once
            await wait_until(lambda: len(handled) == 10, timeout=15, message="all handled")
            await wait_until(lambda: _idle(consumer), message="every event acked")
            states.add(await _breaker(consumer))
            dead = await _dead_letters(consumer)

    assert sorted(handled) == list(range(10))
    assert set(handled.values()) == {1}
    assert states == {"open", "closed"}
    assert dead == 0
