"""An R3 stream on a three-node cluster (loopback): leader step-downs and a node SIGKILL.

Publisher and consumers know all three server URLs; streams and the KV inbox have three
replicas and every node fsyncs each write (``sync_interval: always``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from harness.apps import DURABLE, publisher, settle
from harness.consumers import ConsumerProcess, stop_all
from harness.history import STREAM, History, Verdict
from harness.nodes import NatsCluster
from nats.aio.client import Client
from support import wait_until

from faststream_natspubsub import NatsPubsub

pytestmark = [pytest.mark.fault, pytest.mark.nats, pytest.mark.asyncio(loop_scope="module")]

EVENTS = 1500


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_cluster() -> AsyncIterator[NatsCluster]:
    """One cluster for the module: starting three nodes takes several seconds."""
    async with NatsCluster(3, sync_always=True) as cluster:
        yield cluster


@pytest_asyncio.fixture(loop_scope="module")
async def cluster(shared_cluster: NatsCluster) -> AsyncIterator[NatsCluster]:
    """The shared cluster, all nodes up, and emptied of every stream after the test."""
    for node in shared_cluster.nodes:
        if not node.running:
            await node.start()
    await shared_cluster.wait_jetstream()
    yield shared_cluster
    for node in shared_cluster.nodes:
        if not node.running:
            await node.start()
    await shared_cluster.wait_jetstream()
    nc = await shared_cluster.connect()
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name:
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


async def _stream_with_fault(
    cluster: NatsCluster,
    tmp_path: Path,
    fault: Callable[[NatsPubsub, Client], Awaitable[None]],
    *,
    inbox: str,
) -> tuple[History, Verdict]:
    consumers = [
        ConsumerProcess(cluster.urls, tmp_path, f"c{n}", inbox=inbox, replicas=3) for n in range(2)
    ]
    async with publisher(cluster.urls, replicas=3) as pubsub:
        try:
            await asyncio.gather(*(c.start() for c in consumers))
            history = History()

            async def publish_all() -> None:
                for _ in range(EVENTS):
                    await history.publish(pubsub, timeout=2.0)

            publishing = asyncio.create_task(publish_all())
            await wait_until(
                lambda: len(history.kinds) >= EVENTS // 3 or publishing.done(),
                timeout=60,
                message="a third of the events published",
            )
            await fault(pubsub, pubsub.broker.connection)
            await publishing
            verdict = await settle(pubsub, history, consumers, timeout=90)
        finally:
            await stop_all(consumers)
    return history, verdict


async def test_a_stream_leader_step_down_mid_stream_loses_and_repeats_nothing(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    async def step_down(pubsub: NatsPubsub, nc: Client) -> None:
        old, new = await cluster.step_down_stream(nc, STREAM)
        assert old is not new

    _, verdict = await _stream_with_fault(cluster, tmp_path, step_down, inbox="kv")
    verdict.check("stream leader step-down")


async def test_a_consumer_leader_step_down_mid_stream_loses_and_repeats_nothing(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    async def step_down(pubsub: NatsPubsub, nc: Client) -> None:
        old, new = await cluster.step_down_consumer(nc, STREAM, DURABLE)
        assert old is not new

    _, verdict = await _stream_with_fault(cluster, tmp_path, step_down, inbox="kv")
    verdict.check("consumer leader step-down")


async def test_a_node_killed_during_publish_and_consume_loses_no_acknowledged_event(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    async def kill_the_stream_leader(pubsub: NatsPubsub, nc: Client) -> None:
        leader = await cluster.stream_leader(nc, STREAM)
        await leader.kill()
        await asyncio.sleep(3.0)  # publishing and consuming go on with two nodes
        await leader.start()

    # Without the inbox: at-least-once, so a redelivery after a lost ack may repeat an effect
    history, verdict = await _stream_with_fault(
        cluster, tmp_path, kill_the_stream_leader, inbox="none"
    )
    verdict.check_at_least_once("stream leader SIGKILLed")
    assert len(history.acknowledged) > EVENTS // 2


async def test_a_delayed_nak_is_not_shortened_by_leader_step_downs(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    delay = 3.0
    consumer = ConsumerProcess(cluster.urls, tmp_path, "c", inbox="kv", replicas=3)
    async with publisher(cluster.urls, replicas=3) as pubsub:
        try:
            await consumer.start()
            nc = pubsub.broker.connection
            # Given an event whose handler asks for a retry in 3 s on its first delivery
            event_id = await History().publish(pubsub, "later", delay=delay)
            await _wait_for_deliveries(consumer, event_id, 1)
            # When both the consumer's and the stream's leaders step down in that window
            await cluster.step_down_consumer(nc, STREAM, DURABLE)
            await cluster.step_down_stream(nc, STREAM)
            await _wait_for_deliveries(consumer, event_id, 2, timeout=60)
        finally:
            await stop_all([consumer])

    # Then the redelivery still came no sooner than asked
    first, second = [d for d in consumer.deliveries() if d.event_id == event_id][:2]
    assert second.deliveries == 2
    assert second.at - first.at >= delay


async def _wait_for_deliveries(
    consumer: ConsumerProcess, event_id: str, count: int, *, timeout: float = 20.0
) -> None:
    await wait_until(
        lambda: sum(1 for d in consumer.deliveries() if d.event_id == event_id) >= count,
        timeout=timeout,
        message=f"delivery {count} of {event_id}",
    )
