"""The KV inbox without a round trip per message: claims together, marks before acks."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from permission_support import ADMIN, users_config
from pydantic import BaseModel
from support import new_broker, running, wait_until

from faststream_natspubsub import (
    BatchSettings,
    ClaimResult,
    EventMetadata,
    KvInboxStore,
    NatsPubsub,
    PermissionDeniedError,
)
from faststream_natspubsub.inbox import inbox_bucket_name
from faststream_natspubsub.kv_pipeline import DEFAULT_TIMEOUT, KvBatch
from faststream_natspubsub.publishing import OutgoingEvent
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer
from faststream_natspubsub.violations import PermissionWatch

pytestmark = pytest.mark.nats

ENV, APP, TOPIC = "test", "ledger", "entry.posted"
STREAM = "TEST_LEDGER"
DURABLE = consumer_name(APP, f"{ENV}.{APP}.{TOPIC}")


@pytest.fixture
async def nc(server: EmbeddedNatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(server.url)
    yield client
    await client.close()


async def _store(nc: Client, bucket: str = "inbox_p") -> KvInboxStore:
    store = KvInboxStore(bucket=bucket)
    await store.bind(nc.jetstream())
    return store


async def test_a_batch_of_new_events_is_claimed_without_a_request_each(nc: Client) -> None:
    store = await _store(nc)
    theirs = await _store(nc)
    # Given one event processed, one held by another process, one released (a delete marker)
    assert await store.claim("done", lease=30) is ClaimResult.CLAIMED
    await store.mark_processed("done")
    assert await theirs.claim("held", lease=30) is ClaimResult.CLAIMED
    assert await store.claim("released", lease=30) is ClaimResult.CLAIMED
    await store.release("released")
    new = [f"e{n}" for n in range(100)]

    # When a batch with new ones is claimed, nats-py's per-key request path is off
    create = store.kv.create
    requests: list[str] = []

    async def counted(key: str, value: bytes, *args: Any, **kwargs: Any) -> int:
        requests.append(key)
        return await create(key, value, *args, **kwargs)

    store.kv.create = counted  # type: ignore[method-assign]
    outcomes = await store.claim_many([*new, "done", "held", "released"], lease=30)

    # Then the new ones are claimed by the one write, only the others look closer
    assert outcomes == [ClaimResult.CLAIMED] * 100 + [
        ClaimResult.PROCESSED,
        ClaimResult.IN_PROGRESS,
        ClaimResult.CLAIMED,
    ]
    assert sorted(requests) == ["done", "held", "released"]
    assert await theirs.claim("e7", lease=30) is ClaimResult.IN_PROGRESS


async def test_claims_sent_ahead_answer_the_claim_and_can_be_given_up(nc: Client) -> None:
    store = await _store(nc)
    theirs = await _store(nc)
    await store.claim_ahead(["a", "b", "a"], lease=30)
    # A claim sent ahead is what claim() answers (CLAIMED, and held by this process)
    assert await store.claim("a", lease=30) is ClaimResult.CLAIMED
    assert await theirs.claim("a", lease=30) is ClaimResult.IN_PROGRESS
    # Given up (its message went back unstarted), another process can claim it at once
    await store.release_ahead(["b"])
    assert await theirs.claim("b", lease=30) is ClaimResult.CLAIMED


async def test_while_its_mark_is_on_its_way_an_event_stays_in_progress_here(
    nc: Client,
) -> None:
    store = await _store(nc)
    assert await store.claim("e1", lease=30) is ClaimResult.CLAIMED
    # Given the processed mark sent, its answer not back yet
    on_its_way = KvBatch(1, asyncio.get_running_loop())

    async def unanswered(keys: Any, value: bytes) -> KvBatch:
        return on_its_way

    store._writer.put = unanswered  # type: ignore[union-attr, method-assign]
    await store.mark_started("e1")
    # When another delivery of the event comes to this process, it is held back (its claim
    # is not a lease left behind by a failed release, which this process would take over)
    assert await store.claim("e1", lease=30) is ClaimResult.IN_PROGRESS
    # And once the mark is stored, the key is no longer held here
    on_its_way._settle(0, 1)
    await asyncio.sleep(0)
    assert "e1" not in store._held


class _SlowMarks(KvInboxStore):
    """Marks are answered only when the test says so."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = asyncio.Event()
        self.sent = 0

    async def mark_many(self, event_ids: list[str]) -> Any:
        stored = await super().mark_many(event_ids)
        self.sent += len(event_ids)
        held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def later() -> None:
            await self.release.wait()
            held.set_result(await stored)

        self._later = asyncio.get_running_loop().create_task(later())
        return held


async def test_an_event_is_acknowledged_only_once_its_processed_mark_is_stored(
    server: EmbeddedNatsServer,
) -> None:
    store = _SlowMarks(bucket=inbox_bucket_name(ENV, APP))
    pubsub = NatsPubsub(new_broker(server), env=ENV, app=APP, inbox=store)
    handled: list[str] = []

    @pubsub.subscriber(TOPIC)
    async def post(body: dict[str, Any], meta: EventMetadata) -> None:
        handled.append(meta.event_id)

    async with running(pubsub.broker):
        js = pubsub.broker.connection.jetstream()
        results = await pubsub.publish_many([(TOPIC, {"n": n}) for n in range(3)])
        # Given handlers that returned while their marks are not stored yet
        await wait_until(lambda: len(handled) == 3 and store.sent == 3, message="the handlers")
        await asyncio.sleep(0.3)
        # Then nothing is acknowledged
        assert (await js.consumer_info(STREAM, DURABLE)).num_ack_pending == 3
        # When the marks are stored, the acks follow
        store.release.set()
        await wait_until(lambda: _acked(js, 3), message="the acks")
    assert handled == [result.event_id for result in results]


async def test_in_batch_mode_too_an_event_is_acknowledged_only_once_its_mark_is_stored(
    server: EmbeddedNatsServer,
) -> None:
    store = _SlowMarks(bucket=inbox_bucket_name(ENV, APP))
    pubsub = NatsPubsub(new_broker(server), env=ENV, app=APP, inbox=store)
    handled: list[int] = []

    @pubsub.subscriber(TOPIC, batch=BatchSettings(max_messages=10, max_wait=0.2))
    async def post(entries: list[Entry]) -> None:
        handled.extend(entry.n for entry in entries)

    async with running(pubsub.broker):
        js = pubsub.broker.connection.jetstream()
        await pubsub.publish_many([(TOPIC, {"n": n}) for n in range(5)])
        # Given a batch handled while its marks are not answered yet
        await wait_until(lambda: store.sent == 5, message="the batch's marks")
        await asyncio.sleep(0.3)
        # Then nothing is acknowledged; once they are, every ack follows
        assert (await js.consumer_info(STREAM, DURABLE)).num_ack_pending == 5
        store.release.set()
        await wait_until(lambda: _acked(js, 5), message="the acks")
    assert sorted(handled) == list(range(5))


async def _acked(js: Any, count: int) -> bool:
    info = await js.consumer_info(STREAM, DURABLE)
    return bool(info.num_ack_pending == 0 and info.ack_floor.stream_seq >= count)


async def test_copies_fetched_together_run_the_handler_once_per_event(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env=ENV, app=APP, inbox="kv")
    effects: list[str] = []

    @pubsub.subscriber(TOPIC, max_workers=4)
    async def post(body: dict[str, Any], meta: EventMetadata) -> None:
        await asyncio.sleep(0.01)
        effects.append(meta.event_id)

    async with running(pubsub.broker):
        js = pubsub.broker.connection.jetstream()
        # Given each event published three times (distinct Nats-Msg-Id, the same event id),
        # the copies stored side by side and fetched in the same pulls
        items = [
            (TOPIC, OutgoingEvent(message={"n": n}, event_id=f"evt-{n}"))
            for n in range(40)
            for _ in range(3)
        ]
        await _publish_distinct_copies(pubsub, items)
        await wait_until(lambda: _acked(js, 120), timeout=30, message="every copy acked")
    # Then each event's handler ran once
    assert Counter(effects) == {f"evt-{n}": 1 for n in range(40)}


async def _publish_distinct_copies(pubsub: NatsPubsub, items: list[tuple[str, Any]]) -> None:
    """Publish each item as its own stored message (``Nats-Msg-Id`` made unique)."""
    js = pubsub.broker.connection.jetstream()
    for copy, (topic, event) in enumerate(items):
        data = pubsub.envelope.build_envelope(topic, event, None)
        payload, _ = pubsub.codec.encode(data)
        await js.publish(
            pubsub.subject_for(topic), payload, headers={"Nats-Msg-Id": f"copy-{copy}"}
        )


async def test_a_graceful_stop_gives_up_the_claims_of_what_it_hands_back(
    server: EmbeddedNatsServer,
) -> None:
    # Given a subscriber with the KV inbox (ack_wait 30 s, claims leased for 60 s) whose
    # first handler runs until released, the eight others fetched and claimed ahead
    first = NatsPubsub(new_broker(server, graceful_timeout=20), env=ENV, app=APP, inbox="kv")
    release = asyncio.Event()
    first_handled: list[int] = []

    @first.subscriber(TOPIC)
    async def slow(body: dict[str, Any]) -> None:
        first_handled.append(body["n"])
        await release.wait()

    await first.broker.start()
    js = first.broker.connection.jetstream()
    await first.publish_many([(TOPIC, {"n": n}) for n in range(9)])
    await wait_until(lambda: first_handled == [0], message="the first handler")
    await wait_until(lambda: _ack_pending(js, 9), message="the prefetch")

    # When it stops gracefully and another process starts
    stopping = asyncio.create_task(first.broker.stop())
    second = NatsPubsub(new_broker(server), env=ENV, app=APP, inbox="kv")
    second_handled: list[int] = []

    @second.subscriber(TOPIC)
    async def fast(body: dict[str, Any]) -> None:
        second_handled.append(body["n"])

    async with running(second.broker):
        # Then the other process runs them at once: their claims were given up first
        await wait_until(lambda: len(second_handled) == 8, timeout=10, message="the eight")
        release.set()
        await stopping
    assert second_handled == list(range(1, 9))
    assert first_handled == [0]


async def _ack_pending(js: Any, count: int) -> bool:
    return bool((await js.consumer_info(STREAM, DURABLE)).num_ack_pending == count)


class Entry(BaseModel):
    n: int


async def test_batch_mode_with_the_kv_inbox_runs_each_event_once(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(new_broker(server), env=ENV, app=APP, inbox="kv")
    effects: list[int] = []

    @pubsub.subscriber(TOPIC, batch=BatchSettings(max_messages=50, max_wait=0.05))
    async def post(entries: list[Entry]) -> None:
        effects.extend(entry.n for entry in entries)

    async with running(pubsub.broker):
        js = pubsub.broker.connection.jetstream()
        items = [
            (TOPIC, OutgoingEvent(message={"n": n}, event_id=f"evt-{n}"))
            for n in range(100)
            for _ in range(2)
        ]
        await _publish_distinct_copies(pubsub, items)
        await wait_until(lambda: _acked(js, 200), timeout=30, message="every copy acked")
    assert sorted(effects) == list(range(100))


async def test_a_refused_kv_write_fails_at_once_not_after_the_timeout() -> None:
    # Given a user who may read the bucket's stream but not write its keys
    watch = PermissionWatch()
    config = users_config({"reader": 'permissions { publish { deny: ["$KV.inbox_refused.>"] } }'})
    async with EmbeddedNatsServer(config=config) as server:
        admin = await nats.connect(server.url, user=ADMIN, password=ADMIN)
        await admin.jetstream().create_key_value(bucket="inbox_refused")
        await admin.close()

        async def heard(error: Exception) -> None:
            watch.hear(error)

        nc = await nats.connect(server.url, user="reader", password="reader", error_cb=heard)
        try:
            store = KvInboxStore(bucket="inbox_refused")
            await store.bind(nc.jetstream(), create=False, watch=watch)
            # When a claim and a mark go out through the pipelined writer
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(PermissionDeniedError, match=r"\$KV\.inbox_refused\.e-1"):
                await store.claim("e-1", lease=30)
            marks = await store.mark_many(["e-2", "e-3"])
            errors = await marks
            elapsed = loop.time() - started
        finally:
            await nc.close()

    # Then each fails with the refusal, named, as soon as the server reports it
    assert [type(error) for error in errors] == [PermissionDeniedError] * 2
    assert elapsed < DEFAULT_TIMEOUT / 2
