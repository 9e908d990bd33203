"""What the overview page shows: the app's streams, its consumers' lag, DLQ counts, outbox."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import nats.errors

from ..cli.discovery import is_app_consumer, list_consumers, list_streams
from ..health import DEFAULT_MAX_PENDING, HealthStatus
from ..subjects import dlq_stream_name, stream_name
from .outbox import OutboxProvider, OutboxStats, read_outbox_stats

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.api import ConsumerInfo, StreamInfo

    from .index import DeadLetterIndex, IndexState

__all__ = ("ConsumerRow", "Overview", "StreamRow", "collect_overview")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRow:
    """One stream of the app (its own, its DLQ, or one it consumes from)."""

    name: str
    subjects: list[str]
    messages: int
    bytes: int
    consumers: int
    role: str
    """``events`` (the app's own), ``dead letters`` or ``consumed``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerRow:
    """One durable of the app and how far behind it is."""

    stream: str
    name: str
    filter_subject: str
    pending: int
    """Stored and not yet delivered."""
    ack_pending: int
    """Delivered, waiting for an ack."""
    redelivered: int
    waiting: int
    """Pull requests waiting (workers asking for messages)."""
    status: HealthStatus
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Overview:
    """Everything on the overview page."""

    env: str
    app: str
    streams: list[StreamRow]
    consumers: list[ConsumerRow]
    dlq_stream: str
    dlq: IndexState
    dlq_by_reason: dict[str, int]
    dlq_by_topic: list[tuple[str, str, int]]
    """``(source app, topic, records)``, largest first."""
    dlq_times: tuple[datetime, datetime] | None
    outbox: OutboxStats | None = None
    outbox_error: str | None = None
    outbox_enabled: bool = False
    problems: list[str] = field(default_factory=list)


async def collect_overview(
    nc: Client,
    *,
    env: str,
    app: str,
    index: DeadLetterIndex,
    prefix: str,
    outbox: OutboxProvider | None = None,
    max_pending: int = DEFAULT_MAX_PENDING,
) -> Overview:
    """Gather the overview; the index must have been refreshed by the caller."""
    jsm = nc.jsm()
    problems: list[str] = []
    own, dlq = stream_name(env, app), dlq_stream_name(env, app)
    env_prefixes = (f"{env.upper()}_", f"DLQ_{env.upper()}_")
    streams = [s for s in await list_streams(jsm) if (s.config.name or "").startswith(env_prefixes)]
    consumer_lists = await asyncio.gather(
        *(list_consumers(jsm, s.config.name or "") for s in streams), return_exceptions=True
    )
    consumers: list[ConsumerRow] = []
    consumed: set[str] = set()
    for info, found in zip(streams, consumer_lists, strict=True):
        if isinstance(found, BaseException):
            if not isinstance(found, (nats.errors.Error, TimeoutError)):
                raise found
            problems.append(f"consumers of {info.config.name}: {found}")
            continue
        for consumer in found:
            if is_app_consumer(app, consumer.name):
                consumers.append(_consumer_row(consumer, max_pending))
                consumed.add(consumer.stream_name)
    rows = [
        _stream_row(s, own=own, dlq=dlq)
        for s in streams
        if s.config.name in (own, dlq) or s.config.name in consumed
    ]
    outbox_stats, outbox_error = None, None
    if outbox is not None:
        try:
            outbox_stats = await read_outbox_stats(outbox)
        except Exception as exc:  # noqa: BLE001 - a broken provider must not break the page
            outbox_error = f"{type(exc).__name__}: {exc}"
    by_topic = []
    for subject, count in index.counts_by("subject").items():
        rest = subject[len(prefix) + 1 :] if subject.startswith(prefix + ".") else subject
        source_app, _, topic = rest.partition(".")
        by_topic.append((source_app, topic, count))
    times = index.times()
    return Overview(
        env=env,
        app=app,
        streams=sorted(rows, key=lambda r: (r.role != "events", r.role, r.name)),
        consumers=sorted(consumers, key=lambda c: (c.stream, c.name)),
        dlq_stream=dlq,
        dlq=index.state,
        dlq_by_reason=index.counts_by("reason"),
        dlq_by_topic=by_topic,
        dlq_times=(_time(times[0]), _time(times[1])) if times else None,
        outbox=outbox_stats,
        outbox_error=outbox_error,
        outbox_enabled=outbox is not None,
        problems=problems,
    )


def _stream_row(info: StreamInfo, *, own: str, dlq: str) -> StreamRow:
    name = info.config.name or ""
    state = info.state
    role = "events" if name == own else "dead letters" if name == dlq else "consumed"
    return StreamRow(
        name=name,
        subjects=list(info.config.subjects or ()),
        messages=state.messages,
        bytes=state.bytes,
        consumers=state.consumer_count,
        role=role,
    )


def _consumer_row(info: ConsumerInfo, max_pending: int) -> ConsumerRow:
    pending = int(info.num_pending or 0)
    ack_pending = int(info.num_ack_pending or 0)
    redelivered = int(info.num_redelivered or 0)
    problems = []
    if pending > max_pending:
        problems.append(f"{pending} pending > {max_pending}")
    if redelivered:
        problems.append(f"{redelivered} redelivered")
    return ConsumerRow(
        stream=info.stream_name,
        name=info.name,
        filter_subject=(info.config.filter_subject or ", ".join(info.config.filter_subjects or ())),
        pending=pending,
        ack_pending=ack_pending,
        redelivered=redelivered,
        waiting=int(info.num_waiting or 0),
        status=HealthStatus.DEGRADED if problems else HealthStatus.HEALTHY,
        detail=", ".join(problems) or "keeping up",
    )


def _time(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc)
