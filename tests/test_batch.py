"""Batch mode: one handler call per batch, one outcome per event, on a real server."""

from __future__ import annotations

import time
from typing import Any

import nats
import pytest
from pydantic import BaseModel
from support import new_broker, running, wait_until

from faststream_natspubsub import (
    BatchFailure,
    BatchMetadata,
    BatchSettings,
    DeadLetterQueue,
    MemoryInboxStore,
    NatsPubsub,
    PermanentError,
    RetryPolicy,
)
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

DURABLE = consumer_name("ledger", "test.ledger.entry.posted")


class Entry(BaseModel):
    entry_id: str
    amount: int


def build(server: EmbeddedNatsServer, store: MemoryInboxStore, seen: list[Any]) -> NatsPubsub:
    pubsub = NatsPubsub(
        new_broker(server),
        env="test",
        app="ledger",
        inbox=store,
        retry=RetryPolicy(backoff=(0.3,)),
    )

    @pubsub.subscriber("entry.posted", batch=BatchSettings(max_messages=32, max_wait=0.5))
    async def post(entries: list[Entry], metas: BatchMetadata) -> None:
        seen.append([(e.entry_id, m.deliveries) for e, m in zip(entries, metas, strict=True)])
        failures: dict[int | str, BaseException] = {}
        for index, (entry, meta) in enumerate(zip(entries, metas, strict=True)):
            if entry.entry_id == "flaky" and meta.deliveries == 1:
                failures[index] = ConnectionError("ledger busy")
            if entry.entry_id == "poison":
                failures[meta.event_id] = PermanentError("cannot post")
        if failures:
            raise BatchFailure(failures)

    return pubsub


async def test_one_batch_acks_retries_dead_letters_and_skips_duplicates(
    server: EmbeddedNatsServer,
) -> None:
    store = MemoryInboxStore()
    seen: list[Any] = []

    # Given an event handled once already
    first = build(server, store, seen)
    async with running(first.broker):
        handled = await first.publish("entry.posted", {"entry_id": "done", "amount": 1})
        await wait_until(lambda: len(seen) == 1, message="the first batch")
        js = first.broker.connection.jetstream()
        done_bytes = (await js.get_msg("TEST_LEDGER", handled.seq)).data or b""

    # When one batch brings successes, a flaky item, a poison item, a malformed message,
    # an invalid item and a re-published copy of the handled event
    await first.broker.connect()  # publish only: its subscriber is not running
    nc = await nats.connect(server.url)
    raw_js = nc.jetstream()
    for entry_id in ("a", "b", "c", "flaky", "poison"):
        await first.publish("entry.posted", {"entry_id": entry_id, "amount": 5})
    await raw_js.publish("test.ledger.entry.posted", b"{not json", headers={"Nats-Msg-Id": "m"})
    await first.publish("entry.posted", {"entry_id": "invalid", "amount": "lots"})
    await raw_js.publish("test.ledger.entry.posted", done_bytes, headers={"Nats-Msg-Id": "dup"})
    await nc.close()
    await first.broker.stop()

    seen.clear()
    second = build(server, store, seen)
    async with running(second.broker):
        await wait_until(lambda: len(seen) == 2, message="the batch and the redelivery")
        js = second.broker.connection.jetstream()
        await wait_until(lambda: _settled(js), message="every item settled")
        dlq = DeadLetterQueue(js, env="test", app="ledger")
        records = await dlq.list()
        info = await js.consumer_info("TEST_LEDGER", DURABLE)

    # Then the handler saw the valid new items once, in one call
    assert seen[0] == [("a", 1), ("b", 1), ("c", 1), ("flaky", 1), ("poison", 1)]
    # and the flaky one again later, alone, with its delivery count increased
    assert seen[1] == [("flaky", 2)]
    assert sorted(r.reason for r in records) == ["malformed", "permanent_error", "permanent_error"]
    assert {r.error_type for r in records if r.reason == "permanent_error"} == {
        "PermanentError",
        "ValidationError",
    }
    # Nothing acknowledged twice or lost: 9 messages, each delivered once, the flaky one twice
    assert info.delivered.consumer_seq == 10
    assert info.ack_floor.stream_seq == info.delivered.stream_seq
    assert second.inbox is not None
    assert second.inbox.duplicates == 1


async def _settled(js: Any) -> bool:
    info = await js.consumer_info("TEST_LEDGER", DURABLE)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("database down"),
        # A key that names no item is a bug in the handler: the whole batch failed
        BatchFailure({"no-such-event": RuntimeError("bug in the handler")}),
    ],
    ids=["an-exception-naming-no-item", "a-batch-failure-naming-an-unknown-item"],
)
async def test_a_failure_that_names_no_item_of_the_batch_retries_every_item_by_the_policy(
    server: EmbeddedNatsServer, failure: Exception
) -> None:
    pubsub = NatsPubsub(
        new_broker(server), env="test", app="ledger", retry=RetryPolicy(backoff=(0.2,))
    )
    calls: list[list[int]] = []

    @pubsub.subscriber("entry.posted", batch=BatchSettings(max_messages=10, max_wait=0.3))
    async def post(entries: list[dict[str, Any]], metas: BatchMetadata) -> None:
        calls.append([m.deliveries for m in metas])
        if len(calls) == 1:
            raise failure

    await _backlog(pubsub, 3)
    async with running(pubsub.broker):
        await wait_until(lambda: sum(len(c) for c in calls) >= 6, message="the retry")
        js = pubsub.broker.connection.jetstream()
        await wait_until(lambda: _settled(js), message="every item settled")
        info = await js.consumer_info("TEST_LEDGER", DURABLE)
    # Each item retried by the policy (not NAKed at once into a loop), then acknowledged
    assert calls[0] == [1, 1, 1]
    assert sorted(d for c in calls[1:] for d in c) == [2, 2, 2]
    assert info.delivered.consumer_seq == 6


class _StoreDownFor(MemoryInboxStore):
    """A store out of reach for a while, as a KV bucket or database can briefly be."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.back_at = time.monotonic() + seconds

    async def claim(self, event_id: str, *, lease: float) -> Any:
        if time.monotonic() < self.back_at:
            raise ConnectionError("inbox store unreachable")
        return await super().claim(event_id, lease=lease)


async def test_an_inbox_store_outage_retries_each_item_by_the_policy_instead_of_at_once(
    server: EmbeddedNatsServer,
) -> None:
    # Before: the failed claim NAKed the whole batch at once, again and again, until every
    # item was dead-lettered for max_deliver without its handler running once
    pubsub = NatsPubsub(
        new_broker(server),
        env="test",
        app="ledger",
        inbox=_StoreDownFor(0.8),
        retry=RetryPolicy(backoff=(0.5,)),
    )
    handled: list[int] = []

    @pubsub.subscriber("entry.posted", batch=BatchSettings(max_messages=10, max_wait=0.3))
    async def post(entries: list[dict[str, Any]]) -> None:
        handled.extend(e["n"] for e in entries)

    await _backlog(pubsub, 3)
    async with running(pubsub.broker):
        await wait_until(lambda: len(handled) >= 3, message="every item handled")
        js = pubsub.broker.connection.jetstream()
        await wait_until(lambda: _settled(js), message="every item settled")
        info = await js.consumer_info("TEST_LEDGER", DURABLE)
        records = await DeadLetterQueue(js, env="test", app="ledger").list()
    assert sorted(handled) == [0, 1, 2]
    assert records == []
    # Retried after the policy's 0.5 s: two or three deliveries each during 0.8 s
    assert 6 <= info.delivered.consumer_seq <= 12


async def _backlog(pubsub: NatsPubsub, count: int) -> None:
    """Publish ``count`` entries before the subscriber starts: its first batch has them all."""
    await pubsub.broker.connect()
    await pubsub.declare_topology()
    await pubsub.publish_many([("entry.posted", {"n": n}) for n in range(count)])


def test_batch_subscribers_take_one_worker() -> None:
    from faststream.nats import NatsBroker

    pubsub = NatsPubsub(NatsBroker(), env="test", app="ledger")
    with pytest.raises(ValueError, match="max_workers"):
        pubsub.subscriber("entry.posted", batch=BatchSettings(), max_workers=4)
