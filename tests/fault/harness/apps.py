"""The test process's own side: a publishing NatsPubsub app and the checks on its consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from faststream.nats import NatsBroker

from faststream_natspubsub import DeadLetterRecord, NatsPubsub, StreamSettings
from faststream_natspubsub.subjects import consumer_name

from .consumers import ConsumerProcess, effect_mark_window
from .history import APP, ENV, STREAM, SUBJECT, History, Verdict, dead_letters

DURABLE = consumer_name(APP, SUBJECT)
# Reconnect forever, quickly (nats-py takes a float wait; FastStream's hint says int).
FAST_RECONNECT: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.25}


@asynccontextmanager
async def publisher(servers: Sequence[str], *, replicas: int = 1) -> AsyncIterator[NatsPubsub]:
    """A connected NatsPubsub of the consumers' app that has declared its stream.

    It reconnects forever and quickly, as a service would, so a test sees how publishes
    behave while the server is unreachable rather than a closed connection.
    """
    broker = NatsBroker(list(servers), logger=None, **FAST_RECONNECT)
    pubsub = NatsPubsub(broker, env=ENV, app=APP, streams=StreamSettings(replicas=replicas))
    await broker.connect()
    try:
        await pubsub.declare_topology()
        yield pubsub
    finally:
        await broker.stop()


async def consumer_idle(pubsub: NatsPubsub) -> bool:
    """True when the consumers' durable has nothing pending and nothing unacknowledged."""
    info = await pubsub.broker.connection.jetstream().consumer_info(STREAM, DURABLE)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


def effects_of(consumers: Sequence[ConsumerProcess]) -> list[str]:
    """Every effect of every consumer (and of every restart of it)."""
    return [event_id for consumer in consumers for event_id in consumer.effects()]


async def settle(
    pubsub: NatsPubsub,
    history: History,
    consumers: Sequence[ConsumerProcess],
    *,
    timeout: float = 60.0,
) -> Verdict:
    """Wait until the durable is idle and every acknowledged event has come to rest (handled,
    or dead-lettered), at most ``timeout`` seconds; then return the checker's verdict.

    Once the durable has nothing pending or unacknowledged, nothing more will happen to any
    event. The deadline does not fail the test: the verdict then shows what is missing.
    """
    deadline = time.monotonic() + timeout
    idle_before = False
    while True:
        effects, records = effects_of(consumers), await _dlq_or_empty(pubsub)
        verdict = Verdict(history, effects, records)
        at_rest = history.acknowledged <= set(effects) | set(verdict.dlq)
        idle = at_rest and await _idle_or_false(pubsub)
        if (idle and idle_before) or time.monotonic() > deadline:
            if verdict.duplicated:
                window = effect_mark_window(consumers, set(verdict.duplicated))
                verdict.in_effect_mark_window = window
            return verdict
        idle_before = idle  # idle twice in a row, so an ack in flight is not mistaken for rest
        await asyncio.sleep(0.25)


async def _dlq_or_empty(pubsub: NatsPubsub) -> list[DeadLetterRecord]:
    try:
        return await dead_letters(pubsub)
    except Exception:  # the server may still be electing a leader: look again later
        return []


async def _idle_or_false(pubsub: NatsPubsub) -> bool:
    try:
        return await consumer_idle(pubsub)
    except Exception:
        return False
