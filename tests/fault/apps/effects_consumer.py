"""A consumer whose handler's effect is a line appended to a file; run as a subprocess.

``python effects_consumer.py --servers URL[,URL...] --effects FILE [options]``. It prints
``ready`` once its subscriber runs and stops gracefully on SIGTERM (FastStream's ``run``
calls ``broker.stop()``, which waits up to ``--graceful-timeout`` for running handlers).

The event body says what the handler does: ``{"kind": "normal"}`` appends the event id to
``--effects``; ``"poison"`` raises ``PermanentError``; ``"flaky"`` fails on its first delivery;
``"later"`` raises ``RetryLater(delay)`` on its first delivery. With ``--order-by FIELD``,
events with the same value of that field of their body are handled in order. Every delivery
is first logged to ``--started`` as ``<event id> <delivery> <unix time>``.

``--inbox=sql --database=URL``: the SQL inbox; the effect is then a row of ``fault_effects``
written through ``InboxSession`` (it commits with the processed mark), logged to
``--written`` once written and before the commit, which waits ``--handle-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from faststream import FastStream
from faststream.nats import NatsBroker

from faststream_natspubsub import (
    EventMetadata,
    InboxSession,
    KvInboxStore,
    NatsPubsub,
    PermanentError,
    RetryLater,
    RetryPolicy,
    StreamSettings,
)
from faststream_natspubsub.inbox import inbox_bucket_name

ENV, APP, TOPIC = "fault", "ledger", "entry.posted"
# Reconnect forever, quickly (nats-py takes a float wait; FastStream's hint says int).
FAST_RECONNECT: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.25}


def append_line(path: str, line: str) -> None:
    """One ``write`` on an O_APPEND descriptor: whole lines, even with several processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class MarkLoggingKvStore(KvInboxStore):
    """The KV inbox, logging each processed mark once the server has stored it (``--marks``):
    the checks tell a crash between effect and mark from a mark that did not hold."""

    def __init__(self, marks: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marks = marks

    async def mark_processed(self, event_id: str) -> None:
        await super().mark_processed(event_id)
        if self.marks:
            append_line(self.marks, f"{event_id} {time.time():.6f}")


def build(args: argparse.Namespace) -> FastStream:
    """The FastStream app: one NatsPubsub subscriber writing effects."""
    if args.inbox == "sql":
        return build_sql(args)
    broker = NatsBroker(
        args.servers.split(","),
        logger=None,
        graceful_timeout=args.graceful_timeout,
        **FAST_RECONNECT,
    )
    pubsub = NatsPubsub(
        broker,
        env=ENV,
        app=APP,
        inbox=_inbox(args),
        retry=RetryPolicy(max_attempts=args.max_attempts, backoff=(args.backoff,)),
        streams=StreamSettings(replicas=args.replicas),
    )

    order_by = (lambda message: message.get(args.order_by)) if args.order_by else None

    @pubsub.subscriber(TOPIC, ack_wait=args.ack_wait, max_workers=args.workers, order_by=order_by)
    async def handle(body: dict[str, Any], meta: EventMetadata) -> None:
        if args.started:
            append_line(args.started, f"{meta.event_id} {meta.deliveries} {time.time():.6f}")
        kind = body.get("kind", "normal")
        if kind == "poison":
            raise PermanentError("poison event")
        if kind == "flaky" and meta.deliveries == 1:
            raise ConnectionError("flaky dependency failed once")
        if kind == "later" and meta.deliveries == 1:
            raise RetryLater(delay=float(body["delay"]))
        if args.handle_seconds:
            await asyncio.sleep(args.handle_seconds)
        append_line(args.effects, meta.event_id)

    app = FastStream(broker, logger=None)

    @app.after_startup
    async def announce() -> None:
        print("ready", flush=True)

    return app


def fail_by_kind(body: dict[str, Any], meta: EventMetadata) -> None:
    kind = body.get("kind", "normal")
    if kind == "poison":
        raise PermanentError("poison event")
    if kind == "flaky" and meta.deliveries == 1:
        raise ConnectionError("flaky dependency failed once")
    if kind == "later" and meta.deliveries == 1:
        raise RetryLater(delay=float(body["delay"]))


def build_sql(args: argparse.Namespace) -> FastStream:
    """The SQL-inbox consumer: the effect commits with the processed mark."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from faststream_natspubsub.sql import SqlInboxStore

    connect_args = {"server_settings": {"search_path": args.schema}} if args.schema else {}
    engine = create_async_engine(args.database, connect_args=connect_args)
    effects = sa.Table(
        "fault_effects",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(255), nullable=False),
    )
    store = SqlInboxStore(engine)
    broker = NatsBroker(
        args.servers.split(","),
        logger=None,
        graceful_timeout=args.graceful_timeout,
        **FAST_RECONNECT,
    )
    pubsub = NatsPubsub(
        broker,
        env=ENV,
        app=args.app,
        inbox=store,
        retry=RetryPolicy(max_attempts=args.max_attempts, backoff=(args.backoff,)),
        streams=StreamSettings(replicas=args.replicas),
    )

    @pubsub.subscriber(TOPIC, app=APP, ack_wait=args.ack_wait, max_workers=args.workers)
    async def handle(body: dict[str, Any], meta: EventMetadata, session: InboxSession) -> None:
        if args.started:
            append_line(args.started, f"{meta.event_id} {meta.deliveries} {time.time():.6f}")
        fail_by_kind(body, meta)
        await session.execute(effects.insert().values(event_id=meta.event_id))
        if args.written:
            append_line(args.written, f"{meta.event_id} {time.time():.6f}")
        if args.handle_seconds:
            await asyncio.sleep(args.handle_seconds)  # written, not committed yet

    app = FastStream(broker, logger=None)

    @app.on_startup
    async def tables() -> None:
        await store.create_tables()
        async with engine.begin() as connection:
            await connection.run_sync(effects.metadata.create_all)

    @app.after_startup
    async def announce() -> None:
        print("ready", flush=True)

    return app


def _inbox(args: argparse.Namespace) -> Any:
    if args.inbox == "kv":
        return MarkLoggingKvStore(
            args.marks, bucket=inbox_bucket_name(ENV, APP), replicas=args.replicas
        )
    return None if args.inbox == "none" else args.inbox


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", required=True, help="comma-separated nats:// URLs")
    parser.add_argument("--effects", required=True)
    parser.add_argument("--started", default="")
    parser.add_argument("--marks", default="")
    parser.add_argument("--inbox", choices=("none", "memory", "kv", "sql"), default="kv")
    parser.add_argument("--app", default=APP, help="the consuming app (its durable and DLQ)")
    parser.add_argument("--database", default="", help="SQLAlchemy URL (--inbox=sql)")
    parser.add_argument("--schema", default="", help="PostgreSQL schema (--inbox=sql)")
    parser.add_argument("--written", default="", help="effects written, not yet committed")
    parser.add_argument("--ack-wait", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--handle-seconds", type=float, default=0.0)
    parser.add_argument("--graceful-timeout", type=float, default=10.0)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--backoff", type=float, default=0.2)
    parser.add_argument("--order-by", default="", help="order by this field of the message")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(build(parse()).run())
