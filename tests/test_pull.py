"""The batch subscribers' fetch: same results as nats-py's, without a task per message."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from pydantic import BaseModel
from support import consumer_idle, new_broker, running, wait_until

from faststream_natspubsub import BatchSettings, NatsPubsub
from faststream_natspubsub.pull import BatchFetcher
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

STREAM, SUBJECT = "PULL", "pull.items"


@pytest.fixture
async def js(server: EmbeddedNatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(server.url)
    jetstream = nc.jetstream()
    await jetstream.add_stream(name=STREAM, subjects=[SUBJECT])
    yield jetstream
    await nc.close()


async def _publish(js: JetStreamContext, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        await js.publish(SUBJECT, str(n).encode())


async def test_fetch_returns_what_is_there_and_times_out_when_nothing_comes(
    js: JetStreamContext,
) -> None:
    subscription = await js.pull_subscribe(SUBJECT, durable="d", stream=STREAM)
    assert BatchFetcher.installed(subscription) is None
    fetcher = BatchFetcher.install(subscription)
    assert fetcher is not None
    assert BatchFetcher.install(subscription) is fetcher  # installing twice changes nothing

    # Nothing stored: the fetch waits its whole timeout, then raises nats-py's TimeoutError
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await subscription.fetch(10, timeout=0.3)
    assert time.monotonic() - started >= 0.3

    # Fewer than asked for: they come back without waiting for the batch to fill (one
    # fetch, or two when the last one was still on the wire as the first was handed over)
    await _publish(js, 5)
    started = time.monotonic()
    got: list[Any] = []
    while len(got) < 5:
        got += await subscription.fetch(10 - len(got), timeout=5)
    assert time.monotonic() - started < 2.5  # waiting for the batch would take 5 s
    assert [int(m.data) for m in got] == list(range(5))
    # Asked for the rest of that batch while the server has nothing pending: no waiting
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await subscription.fetch(5, timeout=2)
    assert time.monotonic() - started < 1

    # More than a batch arriving: every message once, in order
    await _publish(js, 30, start=5)
    got += await _collect(subscription, 30)
    assert [int(m.data) for m in got] == list(range(35))
    assert {m.metadata.num_delivered for m in got} == {1}
    for msg in got:
        await msg.ack()
    # The server's status messages (the ends of requests) never reach the caller
    with pytest.raises(nats.errors.TimeoutError):
        await subscription.fetch(10, timeout=0.2)
    await _publish(js, 3, start=35)
    assert [int(m.data) for m in await subscription.fetch(30, timeout=2)] == [35, 36, 37]


async def test_one_fetch_fills_its_batch_when_the_server_has_more_than_one_read_brings(
    js: JetStreamContext,
) -> None:
    # FastStream before 0.7.8 hands the handler what a single fetch returns: that must be the batch
    subscription = await js.pull_subscribe(SUBJECT, durable="d", stream=STREAM)
    assert BatchFetcher.install(subscription) is not None
    body = b"x" * 8192  # 300 of these take many socket reads to arrive
    for _ in range(300):
        await js.publish(SUBJECT, body)

    got = await subscription.fetch(256, timeout=5)
    assert len(got) == 256
    started = time.monotonic()
    rest = await subscription.fetch(256, timeout=5)  # the server has only 44 more: no waiting
    assert len(rest) == 44
    assert time.monotonic() - started < 2.5  # waiting for the batch would take 5 s
    assert [m.metadata.sequence.stream for m in got + rest] == list(range(1, 301))


async def _collect(subscription: Any, count: int, timeout: float = 10.0) -> list[Any]:
    """Fetch until ``count`` messages came, as FastStream's batch loop does."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        try:
            got += await subscription.fetch(count - len(got), timeout=1)
        except nats.errors.TimeoutError:
            continue
    return got


async def test_messages_left_over_when_the_subscription_closes_are_naked_for_redelivery(
    js: JetStreamContext,
) -> None:
    subscription = await js.pull_subscribe(SUBJECT, durable="d", stream=STREAM)
    fetcher = BatchFetcher.install(subscription)
    assert fetcher is not None
    await _publish(js, 10)
    # Given ten messages that arrived for a request but were never handed out
    await fetcher._request(10, 5.0)
    await wait_until(lambda: subscription.pending_msgs == 10, message="the delivered batch")

    # When the subscription closes (the subscriber stops)
    await subscription.unsubscribe()

    # Then they are redelivered at once (the consumer's ack_wait is 30 s)
    again = await js.pull_subscribe(SUBJECT, durable="d", stream=STREAM)
    got = await again.fetch(10, timeout=5)
    assert [int(m.data) for m in got] == list(range(10))
    assert {m.metadata.num_delivered for m in got} == {2}


class Item(BaseModel):
    n: int


async def test_a_batch_subscriber_fetches_through_it_and_handles_each_event_once(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="feed")
    seen: list[int] = []

    subscriber: Any = pubsub.subscriber(
        "item.added", batch=BatchSettings(max_messages=64, max_wait=0.05)
    )

    @subscriber
    async def add(items: list[Item]) -> None:
        seen.extend(item.n for item in items)

    durable = consumer_name("feed", "test.feed.item.added")
    async with running(pubsub.broker):
        assert BatchFetcher.installed(subscriber.subscription) is not None
        js = pubsub.broker.connection.jetstream()
        for start in range(0, 1000, 250):  # bursts, so batches fill, split and wait
            await pubsub.publish_many([("item.added", {"n": n}) for n in range(start, start + 250)])
        await wait_until(lambda: len(seen) >= 1000, timeout=20, message="every item")
        await wait_until(lambda: consumer_idle(js, "TEST_FEED", durable), message="all acked")
        info = await js.consumer_info("TEST_FEED", durable)
    assert sorted(seen) == list(range(1000))
    assert info.delivered.consumer_seq == 1000  # nothing delivered twice


async def test_after_a_reconnect_the_fetch_asks_again_instead_of_waiting_for_lost_requests(
    own_server: EmbeddedNatsServer,
) -> None:
    server = own_server  # this test stops its server: a private one
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await nats.connect(server.url, reconnected_cb=on_reconnect, reconnect_time_wait=0.1)
    try:
        js = nc.jetstream()
        await js.add_stream(name=STREAM, subjects=[SUBJECT])
        subscription = await js.pull_subscribe(SUBJECT, durable="d", stream=STREAM)
        assert BatchFetcher.install(subscription) is not None
        # Given a pull request that would wait 60 s on the server
        await subscription.fetch.fetcher._request(10, 60.0)  # type: ignore[attr-defined]
        # When the server dies (its waiting requests are gone, no status says so), comes
        # back, and the client reconnects
        await server.kill()
        await server.start()
        await asyncio.wait_for(reconnected.wait(), timeout=20)
        await js.publish(SUBJECT, b"after")
        # Then a fetch asks again: the message comes within its timeout, not after 60 s
        got = await _collect(subscription, 1, timeout=5)
        assert [m.data for m in got] == [b"after"]
    finally:
        await nc.close()


async def _requests_counted(nc: Any) -> list[int]:
    """Counts the pull requests ``nc`` sends (one entry per request)."""
    sent: list[int] = []
    publish = nc.publish

    async def counting(subject: str, payload: bytes = b"", reply: str = "", **kw: Any) -> None:
        if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
            sent.append(1)
        await publish(subject, payload, reply, **kw)

    nc.publish = counting
    return sent


async def test_a_consumer_that_refuses_every_request_is_asked_a_few_times_not_thousands(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a consumer whose max_batch is below the batch the subscriber asks for
    await _add_consumer(js, max_batch=2)
    subscription = await js.pull_subscribe_bind("d", stream=STREAM)
    assert BatchFetcher.install(subscription) is not None
    sent = await _requests_counted(js._nc)
    await _publish(js, 5)

    # When a fetch waits a second (before: it asked again at every refusal, 5,000 times)
    with pytest.raises(nats.errors.TimeoutError):
        await subscription.fetch(10, timeout=1.0)

    # Then it asked again only after a pause, and said once why nothing came
    assert 1 < len(sent) <= 6
    refusals = [r.getMessage() for r in caplog.records if "refused a pull request" in r.message]
    assert len(refusals) == 1 and "409 Exceeded MaxRequestBatch" in refusals[0]


async def test_a_fetch_cancelled_with_messages_in_hand_hands_them_back_at_once(
    js: JetStreamContext,
) -> None:
    # Given a fetch holding part of its batch (the server stops at max_ack_pending=5)
    await _add_consumer(js, max_ack_pending=5)
    subscription = await js.pull_subscribe_bind("d", stream=STREAM)
    assert BatchFetcher.install(subscription) is not None
    await _publish(js, 10)
    fetch = asyncio.ensure_future(subscription.fetch(10, timeout=30))
    await wait_until(lambda: _ack_pending(js, 5), message="five delivered, held by the fetch")

    # When the subscriber stops (FastStream closes the subscription, then cancels its fetch)
    await subscription.unsubscribe()
    fetch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetch

    # Then the five are redelivered at once, not after ack_wait (30 s)
    again = await js.pull_subscribe_bind("d", stream=STREAM)
    got = await _collect(again, 5, timeout=5)
    assert sorted(int(m.data) for m in got) == list(range(5))  # a NAK may lose its turn
    assert {m.metadata.num_delivered for m in got} == {2}


async def _ack_pending(js: JetStreamContext, count: int) -> bool:
    info = await js.consumer_info(STREAM, "d")
    return bool(info.num_ack_pending == count)


async def _add_consumer(js: JetStreamContext, **config: Any) -> None:
    """Durable "d" with settings nats-py's ConsumerConfig may not know (``max_batch``)."""
    body = {"stream_name": STREAM, "config": {"durable_name": "d", "ack_policy": "explicit"}}
    body["config"].update(config)  # type: ignore[attr-defined]
    reply = await js._nc.request(f"$JS.API.CONSUMER.CREATE.{STREAM}.d", json.dumps(body).encode())
    assert b'"error"' not in reply.data, reply.data
