"""An app whose only work is its outbox relay; run as a subprocess and SIGKILLed by the tests.

``python outbox_relay.py --servers URL --database URL [--schema S]``: prints ``ready`` once the
broker (and so the relay) runs; SIGTERM stops it gracefully.
"""

from __future__ import annotations

import argparse
import asyncio

from faststream import FastStream
from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import create_async_engine

from faststream_natspubsub import NatsPubsub
from faststream_natspubsub.sql import OutboxOptions

ENV, APP = "fault", "orders"


def build(args: argparse.Namespace) -> FastStream:
    connect_args = {"server_settings": {"search_path": args.schema}} if args.schema else {}
    engine = create_async_engine(args.database, connect_args=connect_args)
    broker = NatsBroker(args.servers.split(","), logger=None)
    NatsPubsub(
        broker,
        env=ENV,
        app=APP,
        outbox=OutboxOptions(
            engine=engine,
            batch_size=args.batch_size,
            lease=args.lease,
            publish_timeout=args.publish_timeout,
            poll_interval=0.1,
        ),
    )
    app = FastStream(broker, logger=None)

    @app.after_startup
    async def announce() -> None:
        print("ready", flush=True)

    return app


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--schema", default="")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lease", type=float, default=4.0)
    parser.add_argument("--publish-timeout", type=float, default=0.5)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(build(parse()).run())
