"""The inbox: one handler effect per event id, in memory and with NATS KV."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from support import consumer_idle, new_broker, running, wait_until

from faststream_natspubsub import (
    ClaimResult,
    EventMetadata,
    KvInboxStore,
    MemoryInboxStore,
    NatsPubsub,
    RetryPolicy,
)
from faststream_natspubsub.inbox import inbox_bucket_name
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
        assert (await bucket.get(result.event_id)).value == b"processed"

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
