"""The inbox: one handler effect per event id, in memory and with NATS KV."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from faststream import BaseMiddleware
from support import consumer_idle, new_broker, running, wait_until

from faststream_natspubsub import (
    ClaimResult,
    DeadLetterQueue,
    EventMetadata,
    KvInboxStore,
    MemoryInboxStore,
    NatsPubsub,
    RetryPolicy,
)
from faststream_natspubsub.inbox import inbox_bucket_name
from faststream_natspubsub.middlewares import inbox as inbox_middleware
from faststream_natspubsub.middlewares.inbox import InboxMiddleware
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

APPS = Path(__file__).parent / "apps"


# -- the memory store, in memory ---------------------------------------------------------


async def test_memory_store_claims_once_then_reports_processed() -> None:
    store = MemoryInboxStore()
    assert await store.claim("e1", lease=30) is ClaimResult.CLAIMED
    assert await store.claim("e1", lease=30) is ClaimResult.IN_PROGRESS
    await store.mark_processed("e1")
    assert await store.claim("e1", lease=30) is ClaimResult.PROCESSED


async def test_memory_store_release_lets_a_retry_claim_again() -> None:
    store = MemoryInboxStore()
    await store.claim("e1", lease=30)
    await store.release("e1")
    assert await store.claim("e1", lease=30) is ClaimResult.CLAIMED


async def test_memory_store_is_bounded_and_evicts_least_recently_used() -> None:
    store = MemoryInboxStore(max_entries=3)
    for event_id in ("a", "b", "c"):
        await store.mark_processed(event_id)
    assert await store.claim("a", lease=30) is ClaimResult.PROCESSED  # a is now most recent
    await store.mark_processed("d")  # evicts b, the least recently used
    assert len(store) == 3
    assert await store.claim("b", lease=30) is ClaimResult.CLAIMED
    assert await store.claim("a", lease=30) is ClaimResult.PROCESSED


async def test_memory_store_forgets_after_the_ttl_and_leases_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    store = MemoryInboxStore(ttl=60)
    await store.mark_processed("done")
    await store.claim("held", lease=10)
    clock[0] += 11
    assert await store.claim("held", lease=10) is ClaimResult.CLAIMED  # lease ran out
    assert await store.claim("done", lease=10) is ClaimResult.PROCESSED
    clock[0] += 60
    assert await store.claim("done", lease=10) is ClaimResult.CLAIMED  # TTL passed


async def test_a_first_delivery_of_a_held_event_looks_again_soon_a_redelivery_after_the_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    store = MemoryInboxStore()
    inbox = InboxMiddleware(store)
    await store.claim("e1", lease=30)
    clock[0] += 10

    # A first delivery is most likely a copy racing a live handler: look again in 2 s
    assert await inbox.in_progress_delay("e1", 1, 30) == 2.0
    # A redelivery is most likely the message of a crashed holder: wait out its lease
    assert await inbox.in_progress_delay("e1", 2, 30) == pytest.approx(20.5)
    assert await store.lease_remaining("e1") == pytest.approx(20.0)


class _FlakyStore(MemoryInboxStore):
    """Fails the first ``failures`` processed marks, as an unreachable KV would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.marks = 0

    async def mark_processed(self, event_id: str) -> None:
        self.marks += 1
        if self.marks <= self.failures:
            raise ConnectionError("inbox store unreachable")
        await super().mark_processed(event_id)


async def test_a_processed_mark_that_fails_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox_middleware, "_MARK_RETRY_DELAYS", (0.0, 0.0, 0.0))
    store = _FlakyStore(failures=2)
    inbox = InboxMiddleware(store)
    await inbox.claim("e1", lease=30)
    await inbox.mark_processed("e1")
    assert store.marks == 3
    assert await store.claim("e1", lease=30) is ClaimResult.PROCESSED


async def test_a_processed_mark_that_cannot_be_written_still_skips_redeliveries_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inbox_middleware, "_MARK_RETRY_DELAYS", (0.0,))
    store = _FlakyStore(failures=3)
    inbox = InboxMiddleware(store)
    await inbox.claim("e1", lease=30)
    await inbox.mark_processed("e1")  # two attempts fail: logged, remembered in the process
    assert await store.claim("e1", lease=30) is ClaimResult.IN_PROGRESS  # not in the store

    # The redelivery is a duplicate here (the third write fails too), then the mark lands
    assert await inbox.claim("e1", lease=30) is ClaimResult.PROCESSED
    assert await inbox.claim("e1", lease=30) is ClaimResult.PROCESSED
    assert await store.claim("e1", lease=30) is ClaimResult.PROCESSED


# -- live ---------------------------------------------------------------------------------


async def _publish_copies(url: str, subject: str, payload: bytes, msg_ids: list[str]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for msg_id in msg_ids:
        await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
    await nc.close()


@pytest.mark.nats
@pytest.mark.parametrize("store", ["memory", "kv"])
async def test_a_republished_event_runs_the_handler_once(
    server: EmbeddedNatsServer, store: str
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="ledger", inbox=store)
    effects: list[str] = []

    @pubsub.subscriber("entry.posted")
    async def post(body: dict[str, Any], meta: EventMetadata) -> None:
        effects.append(meta.event_id)

    async with running(pubsub.broker):
        first = await pubsub.publish("entry.posted", {"amount": 5})
        js = pubsub.broker.connection.jetstream()
        stored = await js.get_msg("TEST_LEDGER", first.seq)
        # The same envelope bytes again, under another Nats-Msg-Id (past de-duplication)
        await _publish_copies(server.url, "test.ledger.entry.posted", stored.data or b"", ["x"])
        durable = consumer_name("ledger", "test.ledger.entry.posted")
        await wait_until(lambda: consumer_idle(js, "TEST_LEDGER", durable), message="both acked")
        info = await js.consumer_info("TEST_LEDGER", durable)
    assert effects == [first.event_id]
    assert info.delivered.stream_seq == 2  # the copy was delivered and acknowledged
    assert pubsub.inbox is not None
    assert pubsub.inbox.duplicates == 1


@pytest.mark.nats
async def test_kv_inbox_remembers_across_an_app_restart(server: EmbeddedNatsServer) -> None:
    effects: list[str] = []

    def build() -> NatsPubsub:
        pubsub = NatsPubsub(new_broker(server), env="test", app="ledger", inbox="kv")

        @pubsub.subscriber("entry.posted")
        async def post(body: dict[str, Any], meta: EventMetadata) -> None:
            effects.append(meta.event_id)

        return pubsub

    first_app = build()
    durable = consumer_name("ledger", "test.ledger.entry.posted")
    async with running(first_app.broker):
        result = await first_app.publish("entry.posted", {"amount": 5})
        js = first_app.broker.connection.jetstream()
        stored = await js.get_msg("TEST_LEDGER", result.seq)
        await wait_until(lambda: effects == [result.event_id], message="the first handling")
        bucket = await js.key_value(inbox_bucket_name("test", "ledger"))
        assert (await bucket.get(f"{durable}.entry=posted.{result.event_id}")).value == b"processed"

    second_app = build()
    async with running(second_app.broker):
        await _publish_copies(server.url, "test.ledger.entry.posted", stored.data or b"", ["c"])
        js = second_app.broker.connection.jetstream()
        await wait_until(lambda: consumer_idle(js, "TEST_LEDGER", durable), message="the copy")
    assert effects == [result.event_id]


@pytest.mark.nats
@pytest.mark.parametrize("store", ["memory", "kv"])
async def test_a_failed_handler_releases_its_claim_so_the_retry_runs(
    server: EmbeddedNatsServer, store: str
) -> None:
    pubsub = NatsPubsub(
        new_broker(server),
        env="test",
        app="ledger",
        inbox=store,
        retry=RetryPolicy(backoff=(0.2,)),
    )
    attempts: list[int] = []

    @pubsub.subscriber("entry.posted")
    async def post(body: dict[str, Any], meta: EventMetadata) -> None:
        attempts.append(meta.deliveries)
        if meta.deliveries == 1:
            raise ConnectionError("ledger database down")

    async with running(pubsub.broker):
        await pubsub.publish("entry.posted", {"amount": 5})
        await wait_until(lambda: attempts == [1, 2], message="the retry")


@pytest.mark.nats
@pytest.mark.parametrize("store", ["memory", "kv"])
async def test_two_subscribers_of_one_event_each_run_their_handler_once(
    server: EmbeddedNatsServer, store: str
) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="ledger", inbox=store)
    effects: list[tuple[str, str]] = []

    @pubsub.subscriber("entry.posted", durable="ledger-post")
    async def post(body: dict[str, Any], meta: EventMetadata) -> None:
        effects.append(("post", meta.event_id))

    @pubsub.subscriber("entry.posted", durable="ledger-audit")
    async def audit(body: dict[str, Any], meta: EventMetadata) -> None:
        effects.append(("audit", meta.event_id))

    async with running(pubsub.broker):
        first = await pubsub.publish("entry.posted", {"amount": 5})
        js = pubsub.broker.connection.jetstream()
        stored = await js.get_msg("TEST_LEDGER", first.seq)
        await _publish_copies(server.url, "test.ledger.entry.posted", stored.data or b"", ["x"])
        for durable in ("ledger-post", "ledger-audit"):
            await wait_until(lambda d=durable: _acked_through(js, d, 2), message=durable)
    # Each subscriber ran once; the copy was a duplicate for each of them
    assert sorted(effects) == [("audit", first.event_id), ("post", first.event_id)]
    assert pubsub.inbox is not None
    assert pubsub.inbox.duplicates == 2


async def _acked_through(js: Any, durable: str, stream_seq: int) -> bool:
    info = await js.consumer_info("TEST_LEDGER", durable)
    return bool(info.ack_floor.stream_seq >= stream_seq and info.num_ack_pending == 0)


class _LoseFirstAck(BaseMiddleware):
    """Outermost: after the first delivery is handled, its ack goes nowhere (a lost ack).

    The ack (FastStream's, or the KV inbox's once the mark is stored) is published to the
    message's reply subject after this returns: pointed elsewhere, it never reaches the server.
    """

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        result = await call_next(msg)
        if msg.raw_message.metadata.num_delivered == 1:
            msg.raw_message.reply = "_INBOX.lost-ack"
        return result


@pytest.mark.nats
async def test_a_processed_event_redelivered_past_max_attempts_is_acknowledged_not_dlqd(
    server: EmbeddedNatsServer,
) -> None:
    broker = new_broker(server)
    broker.insert_middleware(_LoseFirstAck)
    pubsub = NatsPubsub(
        broker, env="test", app="ledger", inbox="kv", retry=RetryPolicy(max_attempts=1)
    )
    effects: list[str] = []

    @pubsub.subscriber("entry.posted", ack_wait=1.0)
    async def post(body: dict[str, Any], meta: EventMetadata) -> None:
        effects.append(meta.event_id)

    durable = consumer_name("ledger", "test.ledger.entry.posted")
    async with running(broker):
        result = await pubsub.publish("entry.posted", {"amount": 5})
        js = broker.connection.jetstream()
        # The second delivery (past max_attempts=1) comes after ack_wait and is acknowledged
        await wait_until(lambda: _acked_through(js, durable, result.seq), message="the ack")
        dead = await DeadLetterQueue(js, env="test", app="ledger").list()
        info = await js.consumer_info("TEST_LEDGER", durable)
    assert effects == [result.event_id]
    assert info.delivered.consumer_seq == 2
    assert pubsub.inbox is not None and pubsub.inbox.duplicates == 1
    assert dead == []


@pytest.mark.nats
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_a_claim_left_by_a_crashed_process_holds_the_event_back_until_its_lease_ends(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = NatsPubsub(
        new_broker(server), env="test", app="ledger", inbox="kv", retry=RetryPolicy(max_attempts=3)
    )
    handled: list[tuple[int, float]] = []

    @pubsub.subscriber("entry.posted", ack_wait=1.0)
    async def post(body: dict[str, Any], meta: EventMetadata) -> None:
        handled.append((meta.deliveries, time.time()))

    durable = consumer_name("ledger", "test.ledger.entry.posted")
    async with running(pubsub.broker):
        js = pubsub.broker.connection.jetstream()
        # Given a claim of a process that died holding it, with 5 s of its lease left
        bucket = await js.key_value(inbox_bucket_name("test", "ledger"))
        expiry = time.time() + 5.0
        await bucket.put(
            f"{durable}.entry=posted.evt-1", f"claimed {expiry:.3f} 0123456789ab".encode()
        )
        await pubsub.publish("entry.posted", {"amount": 5}, event_id="evt-1")
        await wait_until(lambda: bool(handled), timeout=20, message="the handler")
        dead = await DeadLetterQueue(js, env="test", app="ledger").list()
    # Then the first delivery looked again after 2 s, the second waited for the lease's end
    # (one NAK, not one every 2 s), and the third ran the handler: within max_attempts
    at = handled[0][1]
    assert handled == [(3, at)]
    assert at >= expiry
    assert dead == []


@pytest.mark.nats
async def test_a_kv_claim_this_process_could_not_release_is_taken_over_at_once(
    server: EmbeddedNatsServer,
) -> None:
    nc = await nats.connect(server.url)
    try:
        ours, theirs = KvInboxStore(bucket="inbox_t"), KvInboxStore(bucket="inbox_t")
        await ours.bind(nc.jetstream())
        await theirs.bind(nc.jetstream())
        assert await ours.claim("e1", lease=30) is ClaimResult.CLAIMED
        assert await ours.claim("e1", lease=30) is ClaimResult.IN_PROGRESS  # a handler runs
        assert await theirs.claim("e1", lease=30) is ClaimResult.IN_PROGRESS

        async def unreachable(*args: Any, **kwargs: Any) -> None:
            raise ConnectionError("release lost")

        delete = ours.kv.delete
        ours.kv.delete = unreachable  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await ours.release("e1")
        ours.kv.delete = delete  # type: ignore[method-assign]

        # Our own lease, with no handler holding it: ours again, not IN_PROGRESS for 30 s
        assert await ours.claim("e1", lease=30) is ClaimResult.CLAIMED
        assert await theirs.claim("e1", lease=30) is ClaimResult.IN_PROGRESS
        await ours.mark_processed("e1")
        assert await theirs.claim("e1", lease=30) is ClaimResult.PROCESSED
    finally:
        await nc.close()


@pytest.mark.nats
async def test_a_subscriber_can_opt_out_of_the_inbox(server: EmbeddedNatsServer) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="ledger", inbox="memory")
    effects: list[str] = []

    @pubsub.subscriber("entry.audited", inbox=False)
    async def audit(body: dict[str, Any], meta: EventMetadata) -> None:
        effects.append(meta.event_id)

    async with running(pubsub.broker):
        result = await pubsub.publish("entry.audited", {"amount": 5})
        stored = await pubsub.broker.connection.jetstream().get_msg("TEST_LEDGER", result.seq)
        await _publish_copies(server.url, "test.ledger.entry.audited", stored.data or b"", ["c"])
        await wait_until(lambda: len(effects) == 2, message="both copies handled")


async def _start_consumer(url: str, effects: Path, mode: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(APPS / "inbox_consumer.py"),
        url,
        str(effects),
        mode,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
    assert line.strip() == b"ready"
    return process


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=20)


async def _declare_ledger(server: EmbeddedNatsServer) -> NatsPubsub:
    pubsub = NatsPubsub(new_broker(server), env="test", app="ledger", inbox="kv")

    @pubsub.subscriber("entry.posted", ack_wait=1.0, max_workers=4)
    async def post(body: dict[str, Any]) -> None: ...

    await pubsub.broker.connect()
    await pubsub.declare_topology()
    return pubsub


@pytest.mark.nats
@pytest.mark.slow
async def test_a_crash_between_effect_and_ack_does_not_repeat_the_effect(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"
    publisher = await _declare_ledger(server)
    result = await publisher.publish("entry.posted", {"amount": 5})

    # Given a consumer that dies after the handler's effect, before the ack
    dying = await _start_consumer(server.url, effects, "die-before-ack")
    assert await asyncio.wait_for(dying.wait(), timeout=20) == 4
    assert effects.read_text().split() == [result.event_id]

    # When a healthy consumer gets the redelivery (after ack_wait)
    healthy = await _start_consumer(server.url, effects, "normal")
    try:
        js = publisher.broker.connection.jetstream()
        durable = consumer_name("ledger", "test.ledger.entry.posted")
        await wait_until(lambda: _redelivered_and_idle(js, durable), timeout=20, message="ack")
    finally:
        await _stop(healthy)
        await publisher.broker.stop()

    # Then the effect happened once
    assert effects.read_text().split() == [result.event_id]


async def _redelivered_and_idle(js: Any, durable: str) -> bool:
    info = await js.consumer_info("TEST_LEDGER", durable)
    # Two deliveries (the first died unacknowledged), and nothing left to acknowledge.
    delivered_twice = info.delivered.consumer_seq >= 2
    return bool(delivered_twice and info.num_pending == 0 and info.num_ack_pending == 0)


@pytest.mark.nats
@pytest.mark.slow
async def test_four_processes_and_duplicated_events_give_exactly_one_effect_each(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    publisher = await _declare_ledger(server)
    files = [tmp_path / f"effects-{n}.txt" for n in range(4)]
    consumers = [await _start_consumer(server.url, f, "normal") for f in files]
    try:
        # 500 events, each published twice under different Nats-Msg-Ids
        first = await publisher.publish_many([("entry.posted", {"n": n}) for n in range(500)])
        js = publisher.broker.connection.jetstream()
        nc = await nats.connect(server.url)
        copies = nc.jetstream()
        for result in first:
            stored = await js.get_msg("TEST_LEDGER", result.seq)
            await copies.publish(
                result.subject, stored.data or b"", headers={"Nats-Msg-Id": f"{result.event_id}/2"}
            )
        await nc.close()
        durable = consumer_name("ledger", "test.ledger.entry.posted")
        await wait_until(
            lambda: consumer_idle(js, "TEST_LEDGER", durable), timeout=60, message="all acked"
        )
    finally:
        for process in consumers:
            await _stop(process)
        await publisher.broker.stop()

    lines = [line for f in files if f.exists() for line in f.read_text().split()]
    assert len(lines) == 500
    assert set(lines) == {r.event_id for r in first}
    assert sum(1 for f in files if f.exists()) >= 2  # the work really was shared


def test_kv_keys_for_unusual_event_ids_are_stable_and_valid() -> None:
    from faststream_natspubsub.inbox import _key

    assert _key("7d0c6c1e-0d38-4a4e-9a0e-5a8e2f7f8c11") == "7d0c6c1e-0d38-4a4e-9a0e-5a8e2f7f8c11"
    odd = _key("orders/ORD 1:created.v2")
    assert odd == _key("orders/ORD 1:created.v2")
    assert odd.startswith("sha256-")
    assert KvInboxStore(bucket="b").bucket == "b"
