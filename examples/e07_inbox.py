"""The inbox: one handler run per event id, even when the event arrives twice.

``python examples/e07_inbox.py`` runs it on a throw-away ``nats-server``.

``ledger`` posts each entry once. The same event (same envelope, same ``event_id``) is
published a second time under another ``Nats-Msg-Id``, as a NatsPubsub 1.0 service, a
replay or a re-publish after the duplicate window would: JetStream stores both copies, and
the KV inbox acknowledges the second one without running the handler.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import EventMetadata, NatsPubsub, PublishResult
from faststream_natspubsub.inbox import inbox_bucket_name
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

if TYPE_CHECKING:
    from nats.js import JetStreamContext


class Entry(BaseModel):
    account: str
    amount: int


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    first: PublishResult
    copy_seq: int
    """Stream sequence of the second copy: the stream stored it."""
    posted: list[str]
    """Event ids the handler ran for."""
    duplicates: int
    """Deliveries the inbox acknowledged without the handler."""
    inbox: dict[str, bytes]
    """The KV bucket after both copies: key -> value."""
    bucket: str


async def main(url: str) -> Outcome:
    """Publish one entry, then the same event again under another ``Nats-Msg-Id``."""
    # --8<-- [start:app]
    broker = NatsBroker(url, logger=None)
    pubsub = NatsPubsub(broker, env="dev", app="ledger", inbox="kv")
    posted: list[str] = []
    done: asyncio.Queue[str] = asyncio.Queue()

    @pubsub.subscriber("entry.posted")
    async def post(entry: Entry, meta: EventMetadata) -> None:
        posted.append(meta.event_id)  # the side effect that must happen once
        await done.put(meta.event_id)

    # --8<-- [end:app]

    await broker.start()  # also creates the KV bucket natspubsub_inbox_dev_ledger
    try:
        first = await pubsub.publish("entry.posted", Entry(account="A-1", amount=5))
        await asyncio.wait_for(done.get(), timeout=10)

        # --8<-- [start:copy]
        js = broker.connection.jetstream()
        stored = await js.get_msg("DEV_LEDGER", first.seq)  # the envelope as stored
        copy = await js.publish(  # same event_id inside, another Nats-Msg-Id outside
            "dev.ledger.entry.posted", stored.data or b"", headers={"Nats-Msg-Id": "copy-1"}
        )
        # not a duplicate to JetStream (copy.duplicate is None): a second message is stored...
        # --8<-- [end:copy]
        await _until_acknowledged(js, copy.seq)
        # ...and the inbox acknowledged it without running the handler
        assert pubsub.inbox is not None
        duplicates = pubsub.inbox.duplicates

        # --8<-- [start:inspect]
        name = inbox_bucket_name("dev", "ledger")  # natspubsub_inbox_dev_ledger
        bucket = await js.key_value(name)
        inbox = {key: (await bucket.get(key)).value or b"" for key in await bucket.keys()}
        # {'ledger__dev_ledger_entry_posted_9d7a60ae.entry=posted.5f0c...': b'processed'}:
        # <durable>.<topic, dots as '='>.<event_id>
        # --8<-- [end:inspect]
    finally:
        await broker.stop()
    return Outcome(
        first=first,
        copy_seq=copy.seq,
        posted=posted,
        duplicates=duplicates,
        inbox=inbox,
        bucket=name,
    )


async def _until_acknowledged(js: JetStreamContext, seq: int, timeout: float = 10.0) -> None:
    """Wait until the ledger's consumer has acknowledged everything up to ``seq``."""
    durable = consumer_name("ledger", "dev.ledger.entry.posted")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await js.consumer_info("DEV_LEDGER", durable)).ack_floor.stream_seq < seq:
        if loop.time() > deadline:
            raise TimeoutError("the copy was not acknowledged in time")
        await asyncio.sleep(0.05)


async def _run() -> None:
    async with EmbeddedNatsServer() as server:
        outcome = await main(server.url)
    first = outcome.first
    print(f"published {first.event_id} at seq {first.seq}, the copy at seq {outcome.copy_seq}")
    print(f"handler ran for {outcome.posted}; inbox skipped {outcome.duplicates} duplicate(s)")
    print(f"bucket {outcome.bucket}: {outcome.inbox}")


if __name__ == "__main__":
    asyncio.run(_run())
