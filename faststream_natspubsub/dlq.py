"""Writing dead-letter records (their fields and reader are in :mod:`.dlq_record`).

A record is a JSON object on ``dlq.<env>.<consuming app>.<source app>.<topic>`` in the DLQ
stream of the consuming app. Its ``Nats-Msg-Id`` is derived from the original stream
sequence and consumer, so writing the same failure twice (a lost PubAck, a redelivery after
a failed write) stores one record.

A record always fits in the server's maximum payload: an event too large to be kept whole
(with its decoded envelope, then without it) keeps the head of its bytes, their size and
SHA-256, so every failure is recorded once, with its true reason.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import socket
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from nats.errors import MaxPayloadError
from nats.js.api import DiscardPolicy, StorageType

from .codecs.content_types import CONTENT_TYPE_HEADER, WireFormat, wire_format
from .codecs.reader import CodecReader
from .dlq_record import RECORD_VERSION, DeadLetterReason, DeadLetterRecord
from .envelope import DEFAULT_MAX_MESSAGE_SIZE, format_timestamp
from .errors import DeadLetterQueueFullError, PublishError
from .metrics import PubsubMetrics
from .publishing import RETRIABLE_PUBLISH_ERRORS
from .topology import StreamSettings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .codecs.base import Codec
    from .violations import PermissionWatch

__all__ = (
    "DLQ_MAX_BYTES",
    "DLQ_MAX_MSGS",
    "DLQ_PUBLISH_ATTEMPTS",
    "DLQ_PUBLISH_TIMEOUT",
    "DeadLetterReason",
    "DeadLetterRecord",
    "DeadLetterWriter",
    "FailedDelivery",
    "build_record",
    "dlq_stream_settings",
    "dlq_subject",
)

logger = logging.getLogger("faststream_natspubsub.dlq")

# Default bounds of a DLQ stream: a flood of failures must not fill the server's disk.
# At a bound the stream refuses new records (discard new): the events stay in their streams.
DLQ_MAX_BYTES: Final = 1024**3
DLQ_MAX_MSGS: Final = 1_000_000
# The "DLQ full" error is logged at most this often (seconds); the metric counts every one.
_FULL_LOG_INTERVAL: Final = 60.0
# JetStream's error code for a stream at its limits with discard new.
_STREAM_FULL_CODE: Final = 10077
# Bounded so a missing DLQ cannot hold a message past its ack deadline.
DLQ_PUBLISH_TIMEOUT: Final = 2.0
DLQ_PUBLISH_ATTEMPTS: Final = 3
# Exception text kept in a record; a traceback can be long, the record must stay small.
MAX_ERROR_MESSAGE: Final = 2_000
MAX_TRACEBACK: Final = 8_000
# An event id longer than this is hostile, not an id: the record keeps its head only.
MAX_EVENT_ID: Final = 1_024
# Room left in the server's maximum payload for the DLQ message's headers and for headers
# a publish path may add (FastStream's correlation id, a traceparent).
HEADER_ALLOWANCE: Final = 4_096
# Each header of the original delivery keeps at most this much of its value when the
# record is too large.
MAX_KEPT_HEADER: Final = 1_024
_HOST: Final = socket.gethostname()


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedDelivery:
    """The facts about one failed delivery that a record is made of."""

    subject: str
    body: bytes
    headers: Mapping[str, str]
    stream: str | None
    stream_seq: int | None
    consumer: str | None
    deliveries: int
    reason: DeadLetterReason
    error: BaseException | None = None
    detail: str | None = None
    """Explanation kept as the record's error message when there is no exception."""
    first_failure_at: datetime | None = None
    last_failure_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def dlq_stream_settings(
    *,
    replicas: int = 1,
    storage: StorageType = StorageType.FILE,
    max_age: float | None = None,
    max_bytes: int | None = DLQ_MAX_BYTES,
    max_msgs: int | None = DLQ_MAX_MSGS,
) -> StreamSettings:
    """The settings of a DLQ stream the package creates: bounded, refusing new records
    (rather than dropping old ones) at a bound."""
    return StreamSettings(
        replicas=replicas,
        storage=storage,
        max_age=max_age,
        max_bytes=max_bytes,
        max_msgs=max_msgs,
        discard=DiscardPolicy.NEW,
    )


def dlq_subject(prefix: str, original_subject: str) -> str:
    """``dlq.<env>.<consuming app>.`` followed by the original subject without its env."""
    rest = original_subject.split(".", 1)[1] if "." in original_subject else original_subject
    return f"{prefix}.{rest}"


def build_record(
    failure: FailedDelivery,
    *,
    app: str,
    codec: Codec,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE - HEADER_ALLOWANCE,
) -> DeadLetterRecord:
    """Turn a failed delivery into a record whose JSON fits in ``max_size`` bytes.

    The received bytes are always kept exactly, with their ``content-type``, and a JSON
    envelope also decoded for people to read (other codecs' bodies are decoded for display
    by ``dlq show``). When that is too large, the envelope goes first, then long header
    values, then the tail of the bytes (the record keeps their head, size and SHA-256).
    """
    body = failure.body
    envelope: dict[str, Any] | None = None
    event_id: str | None = None
    content_type = failure.headers.get(CONTENT_TYPE_HEADER) or None
    try:
        decoded = CodecReader(codec).decode(body, content_type)
        event_id = _bounded(decoded.event_id, MAX_EVENT_ID)
        if wire_format(content_type) is WireFormat.JSON:
            envelope = decoded.to_dict()
    except Exception:  # noqa: BLE001 - unreadable, even for display: the raw bytes are kept
        event_id, envelope = None, None
    error = failure.error
    record = DeadLetterRecord(
        event_id=event_id,
        reason=failure.reason.value,
        original_subject=failure.subject,
        original_stream=failure.stream,
        original_seq=failure.stream_seq,
        consumer=failure.consumer,
        headers=dict(failure.headers),
        envelope=envelope,
        raw_base64=base64.b64encode(body).decode("ascii"),
        error_type=type(error).__qualname__ if error is not None else None,
        error_message=(
            _bounded(str(error), MAX_ERROR_MESSAGE) if error is not None else failure.detail
        ),
        traceback=_format_traceback(error),
        attempts=failure.deliveries,
        first_failure_at=(
            format_timestamp(failure.first_failure_at) if failure.first_failure_at else None
        ),
        last_failure_at=format_timestamp(failure.last_failure_at),
        dead_lettered_at=format_timestamp(datetime.now(timezone.utc)),
        app=app,
        host=_HOST,
        content_type=content_type,
        raw_size=len(body),
        raw_sha256=hashlib.sha256(body).hexdigest(),
        record_version=RECORD_VERSION,
    )
    return fit_record(record, body, max_size)


def fit_record(record: DeadLetterRecord, body: bytes, max_size: int) -> DeadLetterRecord:
    """``record``, made smaller until its JSON is at most ``max_size`` bytes."""
    if len(record.to_json()) <= max_size:
        return record
    record = dataclasses.replace(record, envelope=None)
    if len(record.to_json()) <= max_size:
        return record
    record = dataclasses.replace(
        record,
        headers={
            k[:MAX_KEPT_HEADER]: _bounded(v, MAX_KEPT_HEADER) for k, v in record.headers.items()
        },
    )
    without_bytes = len(dataclasses.replace(record, raw_base64="", raw_truncated=True).to_json())
    # base64 turns 3 bytes into 4 characters, none of which JSON escapes.
    head = max(max_size - without_bytes, 0) // 4 * 3
    return dataclasses.replace(
        record, raw_base64=base64.b64encode(body[:head]).decode("ascii"), raw_truncated=True
    )


class DeadLetterWriter:
    """Publishes records to the DLQ stream with a short timeout and few tries.

    ``publish`` is FastStream's ``broker.publish`` (or anything with its signature), so DLQ
    writes show up in the broker's telemetry like any other publish. ``max_payload`` is the
    server's limit (the facade sets it from the connection when the broker starts), and
    ``watch`` the connection's permission violations (a refused write fails at once with
    :class:`PermissionDeniedError` instead of timing out).
    """

    def __init__(
        self,
        *,
        app: str,
        stream: str,
        subject_prefix: str,
        codec: Codec,
        timeout: float = DLQ_PUBLISH_TIMEOUT,
        attempts: int = DLQ_PUBLISH_ATTEMPTS,
        max_payload: int = DEFAULT_MAX_MESSAGE_SIZE,
        metrics: PubsubMetrics | None = None,
    ) -> None:
        self.app = app
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.codec = codec
        self.timeout = timeout
        self.attempts = attempts
        self.max_payload = max_payload
        self.metrics = metrics or PubsubMetrics()
        self.watch: PermissionWatch | None = None
        self._full_logged_at = float("-inf")

    async def write(
        self, failure: FailedDelivery, publish: Callable[..., Awaitable[Any]]
    ) -> DeadLetterRecord:
        """Store one record; raise :class:`PublishError` if the DLQ did not confirm it."""
        subject = dlq_subject(self.subject_prefix, failure.subject)
        max_size = self.max_payload - HEADER_ALLOWANCE
        record = build_record(failure, app=self.app, codec=self.codec, max_size=max_size)
        headers = {
            "Nats-Msg-Id": _dedup_id(failure),
            "content-type": "application/json",
            "x-dead-letter": "true",
            "x-dlq-reason": record.reason,
            "x-deliveries": str(record.attempts),
            "x-event-id": _bounded(record.event_id or "", 256),
            "x-original-subject": failure.subject,
        }
        body = record.to_json()
        last: BaseException | None = None
        for attempt in range(self.attempts):
            try:
                sent = publish(
                    body, subject, headers=dict(headers), stream=self.stream, timeout=self.timeout
                )
                await (sent if self.watch is None else self.watch.guard(sent, subject=subject))
            except MaxPayloadError as exc:
                # The server's limit is lower than we were told: keep only what surely fits.
                last = exc
                max_size = min(max_size, len(body)) // 2
                record = fit_record(record, failure.body, max_size)
                body = record.to_json()
            except RETRIABLE_PUBLISH_ERRORS as exc:
                if getattr(exc, "err_code", None) == _STREAM_FULL_CODE:
                    raise self._full(exc, failure) from exc
                last = exc
                if attempt + 1 < self.attempts:
                    await asyncio.sleep(0.05 * (attempt + 1))
            else:
                return record
        raise PublishError(
            f"dead-letter write to {subject!r} failed after {self.attempts} attempts: {last!r}"
        ) from last

    def _full(self, exc: BaseException, failure: FailedDelivery) -> DeadLetterQueueFullError:
        """Count and (at most once a minute) log a refusal of the full DLQ stream."""
        limit = getattr(exc, "description", None) or "full"
        self.metrics.dlq_full.add(1, {**self.metrics.attributes(failure.subject)})
        now = time.monotonic()
        if now - self._full_logged_at >= _FULL_LOG_INTERVAL:
            self._full_logged_at = now
            logger.error(
                "dead-letter stream %s is full (%s): events that fail stay in their streams and "
                "are delivered again later; purge or replay records, or raise the stream's limits",
                self.stream,
                limit,
                extra={"natspubsub_dlq_stream": self.stream},
            )
        return DeadLetterQueueFullError(f"dead-letter stream {self.stream} is full ({limit})")


def _dedup_id(failure: FailedDelivery) -> str:
    if failure.stream is not None and failure.stream_seq is not None:
        return f"dlq:{failure.stream}:{failure.stream_seq}:{failure.consumer or ''}"
    digest = hashlib.sha256(failure.body).hexdigest()[:16]
    return f"dlq:{failure.subject}:{digest}"


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "... [truncated]"


def _format_traceback(error: BaseException | None) -> str | None:
    if error is None or error.__traceback__ is None:
        return None
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    # Keep the end: the frames nearest the failure matter most.
    return text if len(text) <= MAX_TRACEBACK else "[truncated] ..." + text[-MAX_TRACEBACK:]
