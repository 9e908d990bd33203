"""List, inspect, replay and purge dead-letter records of one consuming application.

Every record is untrusted (see :mod:`.replay`): entries that are not records are skipped
and listed in :attr:`DeadLetterQueue.skipped`, and a replay publishes only to the subject
the record's own DLQ subject encodes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors
from nats.js.errors import NotFoundError

from .dlq_record import DeadLetterRecord
from .errors import (
    DeadLetterNotFoundError,
    DeadLetterRecordError,
    PermissionDeniedError,
    PublishError,
    RecordTruncatedError,
    ReplayRefusedError,
)
from .publishing import retry_publish
from .replay import ReplayResult, replay_headers, replay_target
from .subjects import (
    dlq_stream_name,
    dlq_subject_prefix,
    normalize_app,
    normalize_env,
    validate_topic,
)

if TYPE_CHECKING:
    from datetime import datetime

    from nats.js import JetStreamContext
    from nats.js.api import PubAck

    from .replay import ReplayTarget
    from .violations import PermissionWatch

__all__ = ("DeadLetterNotFoundError", "DeadLetterQueue", "SkippedEntry")

logger = logging.getLogger("faststream_natspubsub.dlq")

# What a JetStream request can fail with when the server is slow, away or refuses it.
_SERVER_ERRORS = (nats.errors.Error, TimeoutError, PermissionDeniedError)


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """A message in the DLQ stream that is not a readable record."""

    seq: int
    reason: str


class DeadLetterQueue:
    """The DLQ stream of ``app`` in ``env``, through a JetStream context.

    ``dlq = DeadLetterQueue(nc.jetstream(), env="production", app="payments")``

    ``watch`` (the connection's permission violations) makes a refused replay publish or
    record deletion fail at once instead of after its timeout.
    """

    def __init__(
        self, js: JetStreamContext, *, env: str, app: str, watch: PermissionWatch | None = None
    ) -> None:
        self.js = js
        self.watch = watch
        self.env = normalize_env(env)
        self.app = normalize_app(app)
        self.stream = dlq_stream_name(self.env, self.app)
        self.subject_prefix = dlq_subject_prefix(self.env, self.app)
        self.skipped: list[SkippedEntry] = []
        """Entries the last :meth:`records` pass could not read (foreign or damaged)."""
        self._source_streams: dict[str, str] = {}

    async def records(
        self, *, topic: str | None = None, since: datetime | None = None
    ) -> AsyncIterator[DeadLetterRecord]:
        """Every record, oldest first; ``topic`` matches the original topic (wildcards ok)."""
        filter_subject = (
            f"{self.subject_prefix}.*.{validate_topic(topic)}"
            if topic
            else f"{self.subject_prefix}.>"
        )
        self.skipped = []
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
            if raw.seq is None:
                return
            seq = raw.seq + 1
            try:
                record = DeadLetterRecord.from_json(
                    raw.data or b"", dlq_seq=raw.seq, dlq_subject=raw.subject
                )
            except DeadLetterRecordError as exc:
                # Someone else published on a dlq.* subject; one bad entry must not hide the rest.
                self.skipped.append(SkippedEntry(raw.seq, str(exc)))
                logger.warning(
                    "DLQ %s seq %d is not a dead-letter record: %r", self.stream, raw.seq, str(exc)
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
        """The record stored at ``seq`` in the DLQ stream (malformed records have no event id).

        Raises :class:`DeadLetterNotFoundError` when there is none, and
        :class:`~faststream_natspubsub.DeadLetterRecordError` when the entry is not a record.
        """
        try:
            raw = await self.js.get_msg(self.stream, seq=seq)
        except NotFoundError:
            raise DeadLetterNotFoundError(
                f"no dead-letter record at seq {seq} of {self.stream}"
            ) from None
        try:
            return DeadLetterRecord.from_json(raw.data or b"", dlq_seq=seq, dlq_subject=raw.subject)
        except DeadLetterRecordError as exc:
            raise DeadLetterRecordError(
                f"{self.stream} seq {seq} is not a dead-letter record: {exc}"
            ) from None

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
    ) -> ReplayResult:
        """Publish the event again, exactly as received, to the subject its record is for.

        The subject comes from the record's own subject in the DLQ stream; a record whose
        subject or body says otherwise is refused with :class:`ReplayRefusedError`. The
        body is sent unchanged; the replay is recorded in headers (see :mod:`.replay`). The
        event keeps its ``event_id`` (an inbox treats it as the same event).

        The record is then deleted, unless ``keep=True``; when the deletion fails the
        result says so (``record_deleted=False``, ``delete_error``) instead of raising, since
        the event was republished.
        """
        if isinstance(record, str):
            record = await self.get(record)
        target = replay_target(record, env=self.env, prefix=self.subject_prefix)
        stream = await self._stream_of(target)
        payload = await self._payload(record, target, stream)
        headers = replay_headers(
            record, dlq_stream=self.stream, stream=stream, exact_bytes=record.raw_base64 is not None
        )
        ack = await retry_publish(
            lambda: self._publish(target.subject, payload, headers, timeout),
            subject=target.subject,
        )
        deleted, delete_error = False, None
        if not keep and record.dlq_seq is not None:
            deleted, delete_error = await self._delete(record.dlq_seq)
        return ReplayResult(
            event_id=record.event_id or headers["Nats-Msg-Id"],
            subject=target.subject,
            stream=ack.stream,
            seq=ack.seq,
            duplicate=bool(ack.duplicate),
            dlq_seq=record.dlq_seq,
            record_deleted=deleted,
            delete_error=delete_error,
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

    async def _stream_of(self, target: ReplayTarget) -> str:
        """The stream that holds ``target.subject``, as the server says (cached)."""
        stream = self._source_streams.get(target.subject)
        if stream is None:
            try:
                stream = await self.js.find_stream_name_by_subject(target.subject)
            except NotFoundError:
                raise ReplayRefusedError(
                    f"no stream holds {target.subject!r}: nothing would store the replay"
                ) from None
            if not isinstance(stream, str) or stream == self.stream:
                raise ReplayRefusedError(f"{target.subject!r} is not held by an event stream")
            self._source_streams[target.subject] = stream
        return stream

    async def _payload(self, record: DeadLetterRecord, target: ReplayTarget, stream: str) -> bytes:
        """The bytes to publish: the record's, or for a truncated record the original's."""
        try:
            return record.original_bytes
        except RecordTruncatedError as exc:
            original = await self._original(record, target, stream)
            if original is None:
                raise RecordTruncatedError(
                    f"{exc}, and the original is no longer in {stream} with the same content"
                ) from None
            return original

    async def _original(
        self, record: DeadLetterRecord, target: ReplayTarget, stream: str
    ) -> bytes | None:
        seq = record.original_seq
        if seq is None or seq < 1 or record.raw_sha256 is None:
            return None
        try:
            raw = await self.js.get_msg(stream, seq=seq)
        except NotFoundError:
            return None
        data = raw.data or b""
        same = (
            raw.subject == target.subject
            and len(data) == record.raw_size
            and hashlib.sha256(data).hexdigest() == record.raw_sha256
        )
        return data if same else None

    async def _publish(
        self, subject: str, payload: bytes, headers: dict[str, str], timeout: float
    ) -> PubAck:
        sent = self.js.publish(subject, payload, timeout=timeout, headers=dict(headers))
        try:
            return await (sent if self.watch is None else self.watch.guard(sent, subject=subject))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Something answered that is not JetStream (a core subscriber on the subject).
            raise PublishError(
                f"the answer to the replay on {subject!r} was not a JetStream acknowledgement "
                f"({type(exc).__name__})"
            ) from None

    async def _delete(self, seq: int) -> tuple[bool, str | None]:
        deleted = self.js.delete_msg(self.stream, seq)
        subject = f"$JS.API.STREAM.MSG.DELETE.{self.stream}"
        try:
            await (deleted if self.watch is None else self.watch.guard(deleted, subject=subject))
        except NotFoundError:
            pass  # someone else removed it: it is gone all the same
        except _SERVER_ERRORS as exc:
            reason = getattr(exc, "description", None) or str(exc) or type(exc).__name__
            return False, f"could not delete it: {reason}"
        return True, None
