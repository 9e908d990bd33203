"""Soak: publish continuously (with poison and flaky events) while random faults strike.

Faults, one at a time with a few seconds between them: the server SIGKILLed (it fsyncs
every write) or SIGTERMed and restarted, the server paused (SIGSTOP) for a while, a
consumer SIGKILLed and restarted, a partition through the proxy, a slow link. Everything
goes through the proxy, so a partition cuts publisher and consumers alike.

Besides the KV-inbox consumers of the ledger app, an "audit" app consumes the same events
with the SQL inbox (SQLite): its effect commits with the processed mark, so its verdict
allows no duplicate at all, not even the effect/mark window the KV inbox documents.

``--soak-seconds N`` (or ``NATSPUBSUB_SOAK_SECONDS``) sets the length, 60 s by default, as CI
runs it. By hand, for ten minutes::

    .venv/bin/pytest tests/fault/test_soak.py --soak-seconds 600
    NATSPUBSUB_SOAK_SEED=1234 .venv/bin/pytest tests/fault/test_soak.py --soak-seconds 600

The seed (printed at the start) fixes the sequence of faults and of event kinds; the
interleaving with the server still varies from run to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from harness.apps import publisher, settle
from harness.consumers import ConsumerProcess, stop_all
from harness.history import ENV, POISON, SUBJECT, TOPIC, History, Verdict
from harness.nodes import pause, resume, sync_always_server
from harness.proxy import TcpProxy
from nats.aio.client import Client

from faststream_natspubsub import DeadLetterQueue, DeadLetterRecord, NatsPubsub
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = [pytest.mark.fault, pytest.mark.nats, pytest.mark.slow]

CONSUMERS = 3
AUDIT_APP = "audit"  # the SQL-inbox consumer's app: its own durable and DLQ
AUDIT_DURABLE = consumer_name(AUDIT_APP, SUBJECT)
PUBLISHERS = 2
POISON_SHARE = 0.04
FLAKY_SHARE = 0.06
COPY_SHARE = 0.03  # an earlier event again, under a new Nats-Msg-Id (inbox territory)
FAULT_GAP = (2.0, 6.0)  # seconds between the end of one fault and the start of the next
FAULT_WEIGHTS = {
    "server-sigkill": 2,
    "server-sigterm": 1,
    "server-pause": 1,
    "consumer-sigkill": 3,
    "partition": 2,
    "slow-link": 1,
}


class Soak:
    """The moving parts of one soak run and the faults it can inject."""

    def __init__(self, work: Path, seed: int, seconds: float, say: Callable[[str], None]):
        self.work = work
        self.seconds = seconds
        self.say = say
        self.fault_rng = random.Random(seed)
        self.kind_rng = random.Random(seed + 1)
        self.server: EmbeddedNatsServer = sync_always_server()
        self.proxy: TcpProxy | None = None
        self.consumers: list[ConsumerProcess] = []
        self.audit_db = work / "audit.sqlite"
        self.audit: ConsumerProcess | None = None
        self.history = History()
        self.faults: Counter[str] = Counter()
        self.copies = 0
        self.started = time.monotonic()

    def log(self, text: str) -> None:
        self.say(f"[soak {time.monotonic() - self.started:7.1f}s] {text}")

    async def start(self) -> None:
        await self.server.start()
        self.proxy = TcpProxy(self.server.port)
        await self.proxy.start()
        self.consumers = [
            ConsumerProcess([self.proxy.url], self.work, f"c{n}", inbox="kv", workers=4)
            for n in range(CONSUMERS)
        ]
        self.audit = ConsumerProcess(
            [self.proxy.url],
            self.work,
            "audit",
            inbox="sql",
            workers=4,
            app=AUDIT_APP,
            database=[f"--database=sqlite+aiosqlite:///{self.audit_db}"],
            effects_reader=self.audit_effects,
        )
        await asyncio.gather(*(c.start() for c in self.everyone))

    @property
    def everyone(self) -> list[ConsumerProcess]:
        """Every consumer process, the SQL-inbox one included."""
        return [*self.consumers, *([self.audit] if self.audit else [])]

    def audit_effects(self) -> list[str]:
        """The effects the SQL-inbox consumer committed."""
        if not self.audit_db.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.audit_db, timeout=10)) as db:
            try:
                return [row[0] for row in db.execute("SELECT event_id FROM fault_effects")]
            except sqlite3.OperationalError:  # not created yet
                return []

    async def stop(self) -> None:
        await stop_all(self.everyone)
        if self.proxy is not None:
            await self.proxy.stop()
        resume(self.server.pid)
        await self.server.stop()

    async def heal(self) -> None:
        """Undo every fault: server up and running, link restored, every consumer up."""
        assert self.proxy is not None
        resume(self.server.pid)
        if not self.server.running:
            await self.server.start()
        await self.proxy.restore()
        for consumer in self.everyone:
            if not consumer.running:
                await consumer.start()

    # -- load ----------------------------------------------------------------------------

    async def publish(self, pubsub: NatsPubsub, copier: Client, end: float) -> None:
        rng = self.kind_rng
        while time.monotonic() < end:
            roll = rng.random()
            if roll < COPY_SHARE and self.history.acknowledged:
                await self._copy(copier, rng)
            else:
                kind = (
                    POISON
                    if roll < COPY_SHARE + POISON_SHARE
                    else "flaky"
                    if roll < COPY_SHARE + POISON_SHARE + FLAKY_SHARE
                    else "normal"
                )
                await self.history.publish(pubsub, kind, timeout=2.0)
            await asyncio.sleep(rng.uniform(0, 0.02))

    async def _copy(self, copier: Client, rng: random.Random) -> None:
        """Publish an acknowledged non-poison event again, past de-duplication."""
        event_id = rng.choice(sorted(self.history.acknowledged))
        if self.history.kinds[event_id] == POISON:
            return  # a copy of poison is a second poison message: a second DLQ record
        envelope = {"event_id": event_id, "topic": TOPIC, "message": {"kind": "normal"}}
        self.copies += 1
        try:
            await copier.jetstream().publish(
                SUBJECT,
                json.dumps(envelope).encode(),
                headers={"Nats-Msg-Id": f"{event_id}/copy{self.copies}"},
                timeout=2.0,
            )
        except Exception:  # an extra copy that failed changes nothing that is checked
            self.faults["copy-publish-failed"] += 1

    # -- faults --------------------------------------------------------------------------

    async def inject_faults(self, end: float) -> None:
        names, weights = list(FAULT_WEIGHTS), list(FAULT_WEIGHTS.values())
        while True:
            await asyncio.sleep(self.fault_rng.uniform(*FAULT_GAP))
            if time.monotonic() >= end:
                return
            name = self.fault_rng.choices(names, weights)[0]
            self.log(f"fault {name} (published {len(self.history.kinds)})")
            await getattr(self, "_" + name.replace("-", "_"))()
            self.faults[name] += 1

    async def _server_sigkill(self) -> None:
        await self.server.kill()
        await asyncio.sleep(self.fault_rng.uniform(0, 2))
        await self.server.start()

    async def _server_sigterm(self) -> None:
        await self.server.restart()

    async def _server_pause(self) -> None:
        pause(self.server.pid)
        await asyncio.sleep(self.fault_rng.uniform(0.5, 3))
        resume(self.server.pid)

    async def _consumer_sigkill(self) -> None:
        consumer = self.fault_rng.choice(self.everyone)
        await consumer.kill()
        await asyncio.sleep(self.fault_rng.uniform(0, 2))
        await consumer.start()

    async def _partition(self) -> None:
        assert self.proxy is not None
        await self.proxy.partition(self.fault_rng.uniform(1, 8))

    async def _slow_link(self) -> None:
        assert self.proxy is not None
        self.proxy.delay = self.fault_rng.uniform(0.05, 0.5)
        await asyncio.sleep(self.fault_rng.uniform(2, 5))
        self.proxy.delay = 0.0


@pytest.mark.timeout(1800)  # the soak runs --soak-seconds (default 60, up to minutes)
async def test_soak_under_random_faults_loses_nothing_and_dead_letters_each_poison_once(
    soak_seconds: float, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("NATSPUBSUB_SOAK_SEED") or random.SystemRandom().randrange(2**31))

    def say(text: str) -> None:
        with capsys.disabled():
            print(text, flush=True)

    say(f"\n[soak] seed={seed} seconds={soak_seconds:g} (rerun: NATSPUBSUB_SOAK_SEED={seed})")
    soak = Soak(tmp_path, seed, soak_seconds, say)
    try:
        await soak.start()
        assert soak.proxy is not None
        async with publisher([soak.proxy.url]) as pubsub:
            copier = await nats.connect(
                soak.proxy.url, max_reconnect_attempts=-1, reconnect_time_wait=0.25
            )
            try:
                end = time.monotonic() + soak_seconds
                await asyncio.gather(
                    soak.inject_faults(end),
                    *(soak.publish(pubsub, copier, end) for _ in range(PUBLISHERS)),
                )
                soak.log("load stopped; healing every fault and waiting for the consumers")
                await soak.heal()
                verdict = await settle(pubsub, soak.history, soak.consumers, timeout=180)
                audit = await settle_audit(pubsub, soak, timeout=180)
            finally:
                await copier.close()
    finally:
        await soak.stop()

    verdict.faults = soak.faults + Counter({"copies-published": soak.copies})
    title = f"soak seed={seed} seconds={soak_seconds:g}"
    say(verdict.render(title))
    audit.faults = verdict.faults
    audit_title = f"{title} SQL-inbox consumer (no duplicate allowed)"
    say(audit.render(audit_title))
    verdict.check(title)
    # The SQL inbox closes the effect/mark window: nothing is counted apart.
    assert audit.in_effect_mark_window == set()
    assert audit.duplicated == {}, audit.render(audit_title)
    audit.check(audit_title)


async def settle_audit(pubsub: NatsPubsub, soak: Soak, *, timeout: float) -> Verdict:
    """Wait until the SQL-inbox consumer's durable is idle and every acknowledged event has
    come to rest there too (effect or its DLQ); then its verdict."""
    js = pubsub.broker.connection.jetstream()
    dlq = DeadLetterQueue(js, env=ENV, app=AUDIT_APP)
    deadline = time.monotonic() + timeout
    idle_before = False
    while True:
        records: list[DeadLetterRecord] = []
        with contextlib.suppress(Exception):  # no DLQ stream yet, or a leader election
            records = [record async for record in dlq.records()]
        verdict = Verdict(soak.history, soak.audit_effects(), records)
        at_rest = soak.history.acknowledged <= set(verdict.effects) | set(verdict.dlq)
        idle = False
        if at_rest:
            with contextlib.suppress(Exception):
                info = await js.consumer_info(f"{ENV}_ledger".upper(), AUDIT_DURABLE)
                idle = info.num_pending == 0 and info.num_ack_pending == 0
        if (idle and idle_before) or time.monotonic() > deadline:
            return verdict
        idle_before = idle
        await asyncio.sleep(0.25)
