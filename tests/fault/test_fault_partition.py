"""A 10 s partition between the clients and the server, through the TCP proxy.

The scenario runs once per module (the partition's fixed length is the scenario itself);
each test checks one thing it showed. Publisher and consumer both connect through the
proxy, so both lose the server for the whole cut.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness.apps import publisher, settle
from harness.consumers import ConsumerProcess, stop_all
from harness.history import History, Verdict
from harness.proxy import TcpProxy

from faststream_natspubsub import NatsPubsub, PublishError, PublishResult
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = [pytest.mark.fault, pytest.mark.nats]

PARTITION = 10.0
BACKLOG = 300
SHORT_TIMEOUT = 1.0  # three tries of 1 s end well inside the cut
LONG_TIMEOUT = 15.0  # the first try alone outlasts the cut
BULK = 20  # events of one publish_many made during the cut


@dataclass
class Publish:
    """One publish made during the cut: its event id, outcome and timing."""

    event_id: str
    error: BaseException | None
    started: float
    ended: float


@dataclass
class PartitionRun:
    """What the scenario observed."""

    history: History
    verdict: Verdict
    cut_at: float
    healed_at: float
    pending_at_cut: int
    short: list[Publish] = field(default_factory=list)
    long: list[Publish] = field(default_factory=list)
    bulk: list[PublishResult] = field(default_factory=list)
    bulk_ended: float = 0.0
    reconnected_at: float | None = None


async def _timed_publish(history: History, pubsub: NatsPubsub, timeout: float) -> Publish:
    started = time.monotonic()
    event_id = await history.publish(pubsub, timeout=timeout)
    return Publish(event_id, history.failed.get(event_id), started, time.monotonic())


async def _timed_bulk(history: History, pubsub: NatsPubsub) -> tuple[list[PublishResult], float]:
    results = await history.publish_many(pubsub, BULK, timeout=LONG_TIMEOUT)
    return results, time.monotonic()


async def _run(work: Path) -> PartitionRun:
    async with EmbeddedNatsServer() as server:
        proxy = TcpProxy(server.port)
        await proxy.start()
        # One handler at a time, 20 ms each: a backlog is still pending when the cut comes
        consumer = ConsumerProcess([proxy.url], work, "c", inbox="kv", workers=1, ack_wait=5.0)
        consumer.options.append("--handle-seconds=0.02")
        try:
            async with publisher([proxy.url]) as pubsub:
                await consumer.start()
                history = History()
                for _ in range(BACKLOG):
                    await history.publish(pubsub)
                pending_at_cut = BACKLOG - len(consumer.effects())
                connections = proxy.connections_made

                cut_at = time.monotonic()
                partition = asyncio.create_task(proxy.partition(PARTITION))
                await asyncio.sleep(0.2)
                short = [_timed_publish(history, pubsub, SHORT_TIMEOUT) for _ in range(3)]
                long = [_timed_publish(history, pubsub, LONG_TIMEOUT)]
                bulk = asyncio.create_task(_timed_bulk(history, pubsub))
                results = await asyncio.gather(*short, *long)
                bulk_results, bulk_ended = await bulk
                await partition
                healed_at = cut_at + PARTITION

                reconnected_at = None
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    if proxy.connections_made >= connections + 2:  # publisher and consumer
                        reconnected_at = time.monotonic()
                        break
                    await asyncio.sleep(0.05)
                verdict = await settle(pubsub, history, [consumer], timeout=90)
        finally:
            await stop_all([consumer])
            await proxy.stop()
    return PartitionRun(
        history=history,
        verdict=verdict,
        cut_at=cut_at,
        healed_at=healed_at,
        pending_at_cut=pending_at_cut,
        short=list(results[:3]),
        long=list(results[3:]),
        bulk=bulk_results,
        bulk_ended=bulk_ended,
        reconnected_at=reconnected_at,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> PartitionRun:
    """The partition scenario, run once for the module's tests."""
    return asyncio.run(_run(tmp_path_factory.mktemp("partition")))


def test_both_clients_reconnect_within_five_seconds_of_the_heal(run: PartitionRun) -> None:
    assert run.reconnected_at is not None
    assert run.reconnected_at - run.healed_at < 5.0


def test_events_pending_at_the_cut_are_delivered_after_it_and_none_is_lost(
    run: PartitionRun,
) -> None:
    assert run.pending_at_cut > 0  # there really was a backlog to redeliver
    run.verdict.check("10 s partition")


def test_a_publish_whose_tries_all_fall_inside_the_cut_fails_with_publish_error(
    run: PartitionRun,
) -> None:
    for publish in run.short:
        assert isinstance(publish.error, PublishError), repr(publish.error)
        # three tries of SHORT_TIMEOUT plus the short pauses between them, well before the heal
        assert publish.ended - publish.started < 3 * SHORT_TIMEOUT + 1.0
        assert publish.ended < run.healed_at


def test_a_publish_whose_timeout_outlasts_the_cut_completes_once_it_heals(
    run: PartitionRun,
) -> None:
    for publish in run.long:
        assert publish.error is None, repr(publish.error)
        assert publish.ended >= run.healed_at
        assert publish.event_id in run.history.acknowledged


def test_a_publish_that_failed_during_the_cut_is_still_stored_and_handled_once(
    run: PartitionRun,
) -> None:
    # nats-py buffers what is published while it reconnects and sends it after the heal:
    # a PublishError means "not confirmed", not "not stored". Every try carried the same
    # Nats-Msg-Id, so the server kept one copy and the handler ran once.
    failed = {p.event_id for p in run.short}
    assert failed <= set(run.verdict.recovered)
    assert all(run.verdict.effects.count(event_id) == 1 for event_id in failed)


def test_a_publish_many_whose_timeout_outlasts_the_cut_completes_once_it_heals(
    run: PartitionRun,
) -> None:
    assert len(run.bulk) == BULK
    assert [r.error for r in run.bulk if r.error is not None] == []
    assert run.bulk_ended >= run.healed_at
    # each stored and handled once
    assert all(run.verdict.effects.count(r.event_id) == 1 for r in run.bulk)
