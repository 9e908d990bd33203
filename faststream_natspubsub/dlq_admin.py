"""List, inspect, replay and purge dead-letter records of one consuming application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from nats.js.errors import NotFoundError
from pydantic_core import from_json, to_json

from .dlq import DeadLetterRecord
from .envelope import CONTENT_ENCODING_HEADER, format_timestamp
from .errors import DeadLetterNotFoundError
from .publishing import PublishResult, retry_publish
from .subjects import (
    dlq_stream_name,
    dlq_subject_prefix,
    normalize_app,
    normalize_env,
    validate_topic,
)

if TYPE_CHECKING:
    from nats.js import JetStreamContext

__all__ = ("DeadLetterNotFoundError", "DeadLetterQueue")

logger = logging.getLogger("faststream_natspubsub.dlq")

# Headers JetStream or the original publish set that a replay must not copy.
_NOT_REPLAYED = frozenset(
    {"Nats-Msg-Id", "Nats-Expected-Stream", "Nats-Published-At", CONTENT_ENCODING_HEADER}
)


class DeadLetterQueue:
    """The DLQ stream of ``app`` in ``env``, through a JetStream context.

    ``dlq = DeadLetterQueue(nc.jetstream(), env="production", app="payments")``
    """

    def __init__(self, js: JetStreamContext, *, env: str, app: str) -> None:
        self.js = js
        self.env = normalize_env(env)
        self.app = normalize_app(app)
        self.stream = dlq_stream_name(self.env, self.app)
        self.subject_prefix = dlq_subject_prefix(self.env, self.app)

    async def records(
        self, *, topic: str | None = None, since: datetime | None = None
    ) -> AsyncIterator[DeadLetterRecord]:
        """Every record, oldest first; ``topic`` matches the original topic (wildcards ok)."""
        filter_subject = (
            f"{self.subject_prefix}.*.{validate_topic(topic)}"
            if topic
            else f"{self.subject_prefix}.>"
        )
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            return
        seq, last = info.state.first_seq, info.state.last_seq
        while seq and seq <= last:
            try:
                raw = await self.js.get_msg(self.stream, seq=seq, subject=filter_subject, next=True)
            except NotFoundError:
                return
            if raw.seq is None or raw.data is None:
                return
            seq = raw.seq + 1
            try:
                record = DeadLetterRecord.from_json(raw.data, dlq_seq=raw.seq)
            except (ValueError, TypeError) as exc:
                # Someone else published on a dlq.* subject; one bad entry must not hide the rest.
                logger.warning(
                    "DLQ %s seq %d is not a dead-letter record: %s", self.stream, seq - 1, exc
                )
                continue
            if since is not None and record.dead_lettered_time < since:
                continue
            yield record

    async def list(
        self, *, topic: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[DeadLetterRecord]:
        """Up to ``limit`` records, oldest first."""
        found: list[DeadLetterRecord] = []
        async for record in self.records(topic=topic, since=since):
            found.append(record)
            if len(found) >= limit:
                break
        return found

    async def get_by_seq(self, seq: int) -> DeadLetterRecord:
        """The record stored at ``seq`` in the DLQ stream (malformed records have no event id)."""
        try:
            raw = await self.js.get_msg(self.stream, seq=seq)
        except NotFoundError as exc:
            raise DeadLetterNotFoundError(
                f"no dead-letter record at {self.stream} seq {seq}"
            ) from exc
        try:
            return DeadLetterRecord.from_json(raw.data or b"", dlq_seq=seq)
        except (ValueError, TypeError) as exc:
            raise DeadLetterNotFoundError(f"{self.stream} seq {seq} is not a record") from exc

    async def get(self, event_id: str) -> DeadLetterRecord:
        """The newest record of ``event_id``; raises :class:`DeadLetterNotFoundError`.

        Reads the records one by one (JetStream cannot look messages up by content).
        """
        match: DeadLetterRecord | None = None
        async for record in self.records():
            if record.event_id == event_id:
                match = record
        if match is None:
            raise DeadLetterNotFoundError(f"no dead-letter record for event {event_id!r}")
        return match

    async def replay(
        self, record: DeadLetterRecord | str, *, keep: bool = False, timeout: float = 5.0
    ) -> PublishResult:
        """Publish the original event again to its original subject, then drop the record.

        The event keeps its ``event_id`` (an inbox treats it as the same event); its
        ``Nats-Msg-Id`` is new so de-duplication does not swallow it, and
        ``metadata.dlq_replay`` records where it came from. ``keep=True`` leaves the record.
        """
        if isinstance(record, str):
            record = await self.get(record)
        payload, msg_id = self._replay_payload(record)
        headers = {k: v for k, v in record.headers.items() if k not in _NOT_REPLAYED}
        headers["Nats-Msg-Id"] = msg_id
        headers["Nats-Published-At"] = format_timestamp(datetime.now(timezone.utc))
        subject = record.original_subject
        ack = await retry_publish(
            lambda: self.js.publish(subject, payload, timeout=timeout, headers=dict(headers)),
            subject=subject,
        )
        if not keep and record.dlq_seq is not None:
            await self.js.delete_msg(self.stream, record.dlq_seq)
        return PublishResult(
            event_id=record.event_id or msg_id,
            subject=subject,
            stream=ack.stream,
            seq=ack.seq,
            duplicate=bool(ack.duplicate),
        )

    async def purge(self, *, older_than: datetime | None = None) -> int:
        """Delete records (all, or those dead-lettered before ``older_than``); returns how many."""
        if older_than is None:
            try:
                info = await self.js.stream_info(self.stream)
            except NotFoundError:
                return 0
            count = info.state.messages
            await self.js.purge_stream(self.stream)
            return count
        removed = 0
        async for record in self.records():
            if record.dead_lettered_time < older_than and record.dlq_seq is not None:
                await self.js.delete_msg(self.stream, record.dlq_seq)
                removed += 1
        return removed

    def _replay_payload(self, record: DeadLetterRecord) -> tuple[bytes, str]:
        replay = {
            "dlq_stream": self.stream,
            "dlq_seq": record.dlq_seq,
            "reason": record.reason,
            "replayed_at": format_timestamp(datetime.now(timezone.utc)),
            "original_seq": record.original_seq,
        }
        msg_id = f"{record.event_id or 'raw'}:replay:{self.stream}:{record.dlq_seq}"
        if record.envelope is None:
            return record.original_bytes, msg_id  # raw bytes are replayed as they were
        envelope: dict[str, Any] = from_json(to_json(record.envelope))
        metadata = envelope.setdefault("metadata", {})
        metadata["dlq_replay"] = replay
        metadata["replay_count"] = int(metadata.get("replay_count", 0)) + 1
        return to_json(envelope), msg_id
