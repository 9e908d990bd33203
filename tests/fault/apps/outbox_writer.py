"""A service that adds outbox events: commits some, then dies inside a transaction.

``python outbox_writer.py --database URL [--schema S] --committed N --open M``: commits N
events and prints ``committed <ids>``; then adds M events in a transaction it never ends,
prints ``open <ids>`` and waits to be SIGKILLed. No relay runs here.
"""

from __future__ import annotations

import argparse
import asyncio

from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from faststream_natspubsub import NatsPubsub
from faststream_natspubsub.sql import OutboxOptions

ENV, APP, TOPIC = "fault", "orders", "order.placed"


async def main(args: argparse.Namespace) -> None:
    connect_args = {"server_settings": {"search_path": args.schema}} if args.schema else {}
    engine = create_async_engine(args.database, connect_args=connect_args)
    pubsub = NatsPubsub(
        NatsBroker(), env=ENV, app=APP, outbox=OutboxOptions(engine=engine, relay=False)
    )
    outbox = pubsub.outbox
    assert outbox is not None
    async with AsyncSession(engine) as session, session.begin():
        committed = [await outbox.add(session, TOPIC, {"n": n}) for n in range(args.committed)]
    print("committed", *committed, flush=True)
    session = AsyncSession(engine)
    await session.begin()
    pending = [await outbox.add(session, TOPIC, {"n": n}) for n in range(args.open)]
    print("open", *pending, flush=True)
    await asyncio.Event().wait()  # inside the transaction until SIGKILL


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", required=True)
    parser.add_argument("--schema", default="")
    parser.add_argument("--committed", type=int, default=5)
    parser.add_argument("--open", type=int, default=5)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
