"""The facade's fetch-ahead dispatch against a real server: safety, order, concurrency, keys."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from faststream.nats.annotations import NatsMessage
from support import new_broker, running, wait_until

from faststream_natspubsub import EventMetadata, NatsPubsub, RetryLater
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

ENV, APP, TOPIC = "test", "dispatch", "job.run"
STREAM = "TEST_DISPATCH"
DURABLE = consumer_name(APP, f"{ENV}.{APP}.{TOPIC}")


@asynccontextmanager
async def publisher(server: EmbeddedNatsServer) -> AsyncIterator[NatsPubsub]:
    """The app's stream, declared, and a facade to publish with (no subscriber)."""
    pubsub = NatsPubsub(new_broker(server), env=ENV, app=APP)
    async with running(pubsub.broker):
        yield pubsub


async def _publish(pubsub: NatsPubsub, bodies: list[dict[str, Any]]) -> list[str]:
    results = await pubsub.publish_many([(TOPIC, body) for body in bodies])
    assert all(result.ok for result in results)
    return [result.event_id for result in results]


async def _consumer_info(pubsub: NatsPubsub) -> Any:
    return await pubsub.broker.connection.jetstream().consumer_info(STREAM, DURABLE)


async def _idle(pubsub: NatsPubsub) -> bool:
    info = await _consumer_info(pubsub)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


@pytest.mark.slow
async def test_messages_waiting_behind_a_handler_slower_than_ack_wait_are_not_redelivered(
    server: EmbeddedNatsServer,
) -> None:
    # Given six stored events and a subscriber with ack_wait 1 s whose handler takes 0.5 s:
    # its first pull fetches them all, and the last waits 2.5 s in the client
    async with publisher(server) as pub:
        published = await _publish(pub, [{"n": n} for n in range(6)])
        consumer = NatsPubsub(new_broker(server), env=ENV, app=APP)
        started: list[tuple[str, int]] = []

        @consumer.subscriber(TOPIC, ack_wait=1.0)
        async def run(body: dict[str, Any], meta: EventMetadata) -> None:
            started.append((meta.event_id, meta.deliveries))
            await asyncio.sleep(0.5)

        # When it consumes them
        async with running(consumer.broker):
            await wait_until(lambda: len(started) >= 1, message="the first handler")
            fetched_ahead = (await _consumer_info(pub)).num_ack_pending
            await wait_until(lambda: _idle(pub), timeout=15, message="every event acked")

    # Then they were fetched ahead, and each ran once, in order, on its first delivery
    assert fetched_ahead == 6
    assert started == [(event_id, 1) for event_id in published]


async def test_a_graceful_stop_hands_back_at_once_what_was_fetched_but_not_started(
    server: EmbeddedNatsServer,
) -> None:
    async with publisher(server) as pub:
        published = await _publish(pub, [{"n": n} for n in range(9)])
        # Given a subscriber (ack_wait 30 s) whose first handler runs until released, with
        # the eight other events fetched ahead
        first = NatsPubsub(new_broker(server, graceful_timeout=20), env=ENV, app=APP)
        release = asyncio.Event()
        first_handled: list[str] = []

        @first.subscriber(TOPIC)
        async def slow(body: dict[str, Any], meta: EventMetadata) -> None:
            first_handled.append(meta.event_id)
            await release.wait()

        await first.broker.start()
        await wait_until(lambda: len(first_handled) == 1, message="the first handler")
        await wait_until(lambda: _fetched_all(pub, 9), message="the prefetch")

        # When it stops gracefully (its handler still running), and another process starts
        stopping = asyncio.create_task(first.broker.stop())
        second = NatsPubsub(new_broker(server), env=ENV, app=APP)
        second_handled: list[tuple[str, int]] = []

        @second.subscriber(TOPIC)
        async def fast(body: dict[str, Any], meta: EventMetadata) -> None:
            second_handled.append((meta.event_id, meta.deliveries))

        started = time.monotonic()
        async with running(second.broker):
            # Then the eight come to the other process at once, in order, not after ack_wait
            await wait_until(lambda: len(second_handled) == 8, timeout=10, message="the eight")
            took = time.monotonic() - started
            assert not stopping.done()  # the first handler still runs
            release.set()
            await stopping
            await wait_until(lambda: _idle(pub), message="every event acked")

    assert took < 10
    assert first_handled == published[:1]
    assert second_handled == [(event_id, 2) for event_id in published[1:]]


async def _fetched_all(pub: NatsPubsub, count: int) -> bool:
    return bool((await _consumer_info(pub)).num_ack_pending == count)


async def test_one_worker_handles_events_one_at_a_time_in_stream_order(
    server: EmbeddedNatsServer,
) -> None:
    async with publisher(server) as pub:
        published = await _publish(pub, [{"n": n} for n in range(300)])
        consumer = NatsPubsub(new_broker(server), env=ENV, app=APP)
        handled: list[str] = []
        running_now = 0
        overlapped = False

        @consumer.subscriber(TOPIC)
        async def one(body: dict[str, Any], meta: EventMetadata) -> None:
            nonlocal running_now, overlapped
            running_now += 1
            overlapped = overlapped or running_now > 1
            if body["n"] % 7 == 0:
                await asyncio.sleep(0.002)  # some handlers wait, some do not
            handled.append(meta.event_id)
            running_now -= 1

        async with running(consumer.broker):
            await wait_until(lambda: len(handled) >= 300, timeout=20, message="every event")
            await wait_until(lambda: _idle(pub), message="every event acked")
            info = await _consumer_info(pub)

    assert handled == published
    assert not overlapped
    assert info.delivered.consumer_seq == 300  # nothing delivered twice


async def test_max_workers_keeps_that_many_handlers_busy_and_no_more(
    server: EmbeddedNatsServer,
) -> None:
    async with publisher(server) as pub:
        await _publish(pub, [{"n": n} for n in range(64)])
        consumer = NatsPubsub(new_broker(server), env=ENV, app=APP)
        handled: list[int] = []
        running_now = peak = 0

        @consumer.subscriber(TOPIC, max_workers=8)
        async def io_bound(body: dict[str, Any]) -> None:
            nonlocal running_now, peak
            running_now += 1
            peak = max(peak, running_now)
            await asyncio.sleep(0.05)
            running_now -= 1
            handled.append(body["n"])

        async with running(consumer.broker):
            await wait_until(lambda: len(handled) >= 64, timeout=20, message="every event")

    assert peak == 8
    assert sorted(handled) == list(range(64))


async def test_order_by_keeps_each_key_in_order_and_runs_keys_in_parallel(
    server: EmbeddedNatsServer,
) -> None:
    keys = ("a", "b", "c", "d")
    async with publisher(server) as pub:
        await _publish(pub, [{"key": keys[n % 4], "n": n} for n in range(120)])
        consumer = NatsPubsub(new_broker(server), env=ENV, app=APP)
        by_key: dict[str, list[int]] = defaultdict(list)
        active: set[str] = set()
        same_key_overlap = False
        peak = 0

        @consumer.subscriber(TOPIC, max_workers=8, order_by=lambda message: message["key"])
        async def keyed(body: dict[str, Any]) -> None:
            nonlocal same_key_overlap, peak
            same_key_overlap = same_key_overlap or body["key"] in active
            active.add(body["key"])
            peak = max(peak, len(active))
            await asyncio.sleep(random.uniform(0, 0.01))
            by_key[body["key"]].append(body["n"])
            active.discard(body["key"])

        async with running(consumer.broker):
            await wait_until(
                lambda: sum(map(len, by_key.values())) >= 120, timeout=20, message="every event"
            )

    assert not same_key_overlap
    assert peak > 1
    for index, key in enumerate(keys):
        assert by_key[key] == list(range(index, 120, 4))


async def test_a_router_subscriber_orders_by_key_and_keeps_it_across_a_restart_of_its_broker(
    server: EmbeddedNatsServer,
) -> None:
    async with publisher(server) as pub:
        consumer = NatsPubsub(new_broker(server), env=ENV, app=APP)
        router = consumer.router()
        by_key: dict[str, list[int]] = defaultdict(list)
        active: set[str] = set()
        same_key_overlap = False

        @router.subscriber(TOPIC, max_workers=8, order_by=lambda message: message["key"])
        async def keyed(body: dict[str, Any]) -> None:
            nonlocal same_key_overlap
            same_key_overlap = same_key_overlap or body["key"] in active
            active.add(body["key"])
            await asyncio.sleep(random.uniform(0, 0.005))
            by_key[body["key"]].append(body["n"])
            active.discard(body["key"])

        consumer.broker.include_router(router.nats)

        def handled() -> int:
            return sum(map(len, by_key.values()))

        # When the router's subscriber consumes, its broker stops, starts again, consumes more
        await _publish(pub, [{"key": "ab"[n % 2], "n": n} for n in range(40)])
        async with running(consumer.broker):
            await wait_until(lambda: handled() >= 40, timeout=20, message="the first events")
        await _publish(pub, [{"key": "ab"[n % 2], "n": n} for n in range(40, 80)])
        async with running(consumer.broker):
            await wait_until(lambda: handled() >= 80, timeout=20, message="the later events")
            await wait_until(lambda: _idle(pub), message="every event acked")

    # Then each key was handled one at a time in publishing order, each event once
    assert not same_key_overlap
    assert by_key["a"] == list(range(0, 80, 2))
    assert by_key["b"] == list(range(1, 80, 2))
    assert len(consumer._registrar.lifecycle.dispatchers) == 1


@pytest.mark.slow
async def test_a_retried_event_holds_its_key_and_the_key_waits_past_ack_wait(
    server: EmbeddedNatsServer,
) -> None:
    async with publisher(server) as pub:
        # Given key A's first event failing once with a 1.5 s delay (longer than ack_wait)
        events = [{"key": "A", "n": 0, "retry": 1.5}]
        events += [{"key": "A", "n": n} for n in range(1, 4)]
        events += [{"key": "B", "n": n} for n in range(4, 8)]
        published = await _publish(pub, events)
        consumer = NatsPubsub(new_broker(server), env=ENV, app=APP)
        log: list[tuple[str, int, int, float]] = []

        @consumer.subscriber(
            TOPIC, ack_wait=1.0, max_workers=4, order_by=lambda message: message["key"]
        )
        async def keyed(body: dict[str, Any], meta: EventMetadata) -> None:
            log.append((body["key"], body["n"], meta.deliveries, time.monotonic()))
            if "retry" in body and meta.deliveries == 1:
                raise RetryLater(delay=body["retry"])

        # When it consumes them
        async with running(consumer.broker):
            await wait_until(lambda: len(log) >= 9, timeout=15, message="every event")
            await wait_until(lambda: _idle(pub), message="every event acked")

    # Then B went on while A waited; A's later events came after its retry, each on its
    # first delivery (kept alive past ack_wait while they waited)
    a_runs = [(n, deliveries) for key, n, deliveries, _ in log if key == "A"]
    assert a_runs == [(0, 1), (0, 2), (1, 1), (2, 1), (3, 1)]
    retried_at = next(at for key, n, deliveries, at in log if (n, deliveries) == (0, 2))
    b_done = max(at for key, _, _, at in log if key == "B")
    assert b_done < retried_at
    assert len(published) == 8


async def test_a_retry_back_before_its_handler_ended_runs_next_without_a_stall(
    server: EmbeddedNatsServer,
) -> None:
    # Before: a handler that NAKed its message by hand and then awaited something saw the
    # redelivery arrive first; it was queued behind the key's later event, and the key was
    # held behind itself until the hold ran out (ack_wait + 1 s), out of order.
    async with publisher(server) as pub:
        consumer = NatsPubsub(new_broker(server), env=ENV, app=APP)
        log: list[tuple[int, int]] = []
        queued = asyncio.Event()

        @consumer.subscriber(TOPIC, ack_wait=3.0, max_workers=2, order_by=lambda m: m["key"])
        async def keyed(body: dict[str, Any], meta: EventMetadata, msg: NatsMessage) -> None:
            log.append((body["n"], meta.deliveries))
            if body["n"] == 0 and meta.deliveries == 1:
                await queued.wait()  # A1 waits behind A0
                await msg.nack()  # redelivered at once, while this handler goes on
                await wait_until(lambda: _redelivered(consumer), message="the retry is back")

        async with running(consumer.broker):
            await _publish(pub, [{"key": "A", "n": 0}])
            await wait_until(lambda: log == [(0, 1)], message="A0 runs")
            await _publish(pub, [{"key": "A", "n": 1}])
            await wait_until(lambda: _queued_behind(consumer), message="A1 queued")
            queued.set()
            started = time.monotonic()
            await wait_until(lambda: len(log) >= 3, message="the retry and A1")
            took = time.monotonic() - started

    assert log == [(0, 1), (0, 2), (1, 1)]
    assert took < 3.0  # no hold of ack_wait + 1 s


def _run_of(consumer: NatsPubsub) -> Any:
    [dispatcher] = list(consumer._registrar.lifecycle.dispatchers.values())
    return dispatcher.current


def _queued_behind(consumer: NatsPubsub) -> bool:
    run = _run_of(consumer)
    return run is not None and any(lane.queue for lane in run.lanes.values())


def _redelivered(consumer: NatsPubsub) -> bool:
    run = _run_of(consumer)
    return run is not None and any(len(lane.queue) == 2 for lane in run.lanes.values())


@pytest.mark.slow
async def test_a_graceful_restart_hands_a_held_key_back_retried_event_first(
    server: EmbeddedNatsServer,
) -> None:
    async with publisher(server) as pub:
        # Given key A's first event retried after 30 s, its three later events held behind it
        events = [{"key": "A", "n": 0, "retry": 30.0}]
        events += [{"key": "A", "n": n} for n in range(1, 4)]
        await _publish(pub, events)
        first = NatsPubsub(new_broker(server), env=ENV, app=APP)
        first_log: list[tuple[int, int]] = []

        @first.subscriber(TOPIC, max_workers=4, order_by="subject")
        async def failing(body: dict[str, Any], meta: EventMetadata) -> None:
            first_log.append((body["n"], meta.deliveries))
            raise RetryLater(delay=body.get("retry", 30.0))

        async with running(first.broker):
            await wait_until(lambda: _fetched_all(pub, 4), message="A's events fetched")
            await wait_until(lambda: first_log == [(0, 1)], message="the first failure")

        # When the subscriber stops gracefully and a new process starts
        second = NatsPubsub(new_broker(server), env=ENV, app=APP)
        second_log: list[tuple[int, int]] = []

        @second.subscriber(TOPIC, max_workers=4, order_by="subject")
        async def succeeding(body: dict[str, Any], meta: EventMetadata) -> None:
            second_log.append((body["n"], meta.deliveries))

        started = time.monotonic()
        async with running(second.broker):
            await wait_until(lambda: len(second_log) >= 4, timeout=10, message="A's events")
            took = time.monotonic() - started
            await wait_until(lambda: _idle(pub), message="every event acked")

    # Then the retried event came back at once, not after its delay, and before the others
    assert first_log == [(0, 1)]
    assert second_log == [(0, 2), (1, 2), (2, 2), (3, 2)]
    assert took < 10
