"""Dead-letter records: what they hold, how they are written, and how to read them back.

A record is a JSON object on ``dlq.<env>.<consuming app>.<source app>.<topic>`` in the DLQ
stream of the consuming app. Its ``Nats-Msg-Id`` is derived from the original stream
sequence and consumer, so writing the same failure twice (a lost PubAck, a redelivery after
a failed write) stores one record.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

from pydantic_core import from_json, to_json

from .codecs.content_types import CONTENT_TYPE_HEADER, WireFormat, wire_format
from .codecs.reader import CodecReader
from .envelope import MalformedEnvelopeError, format_timestamp, parse_timestamp
from .errors import PublishError
from .publishing import RETRIABLE_PUBLISH_ERRORS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .codecs.base import Codec

__all__ = (
    "DLQ_PUBLISH_ATTEMPTS",
    "DLQ_PUBLISH_TIMEOUT",
    "DeadLetterReason",
    "DeadLetterRecord",
    "DeadLetterWriter",
    "FailedDelivery",
    "dlq_subject",
)

# Bounded so a missing DLQ cannot hold a message past its ack deadline.
DLQ_PUBLISH_TIMEOUT: Final = 2.0
DLQ_PUBLISH_ATTEMPTS: Final = 3
# Exception text kept in a record; a traceback can be long, the record must stay small.
MAX_ERROR_MESSAGE: Final = 2_000
MAX_TRACEBACK: Final = 8_000
_HOST: Final = socket.gethostname()


class DeadLetterReason(str, Enum):
    """Why an event was dead-lettered."""

    MAX_ATTEMPTS_EXCEEDED = "max_attempts_exceeded"
    """The handler failed on every attempt the retry policy allows."""
    PERMANENT_ERROR = "permanent_error"
    """A validation error, ``PermanentError`` or another type configured as permanent."""
    MALFORMED = "malformed"
    """The bytes are not a readable envelope."""
    MAX_DELIVER_EXCEEDED = "max_deliver_exceeded"
    """The server gave up (the consumer's ``max_deliver``); usually a crashing consumer."""
    PROGRAMMING_ERROR = "programming_error"
    """The handler cannot be called as declared (for example a model that is not fully
    defined): no retry can fix it, the code must change."""


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


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterRecord:
    """One dead-lettered event as stored in (and read back from) the DLQ stream."""

    event_id: str | None
    """The envelope's event id, if the body was readable."""
    reason: str
    """A :class:`DeadLetterReason` value."""
    original_subject: str
    original_stream: str | None
    original_seq: int | None
    consumer: str | None
    headers: dict[str, str]
    """Every header of the original delivery."""
    envelope: dict[str, Any] | None
    """The original envelope, when it could be decoded."""
    raw_base64: str | None
    """The original bytes, when they were not a readable envelope."""
    error_type: str | None
    error_message: str | None
    traceback: str | None
    attempts: int
    first_failure_at: str | None
    last_failure_at: str
    dead_lettered_at: str
    app: str
    host: str
    dlq_seq: int | None = None
    """Sequence of the record in the DLQ stream, when read back."""
    content_type: str | None = None
    """The original ``content-type``; a body that is not JSON is kept as raw bytes."""

    def to_json(self) -> bytes:
        """The stored form."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data.pop("dlq_seq")
        return to_json(data)

    @classmethod
    def from_json(cls, payload: bytes, *, dlq_seq: int | None = None) -> DeadLetterRecord:
        """Read a stored record."""
        data = from_json(payload)
        data.pop("dlq_seq", None)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known, dlq_seq=dlq_seq)

    @property
    def topic(self) -> str:
        """The original topic (the subject without env and app)."""
        parts = self.original_subject.split(".", 2)
        return parts[2] if len(parts) == 3 else self.original_subject

    @property
    def original_bytes(self) -> bytes:
        """The original message body, re-encoded from the envelope or the raw bytes."""
        if self.raw_base64 is not None:
            return base64.b64decode(self.raw_base64)
        return to_json(self.envelope)

    @property
    def dead_lettered_time(self) -> datetime:
        """``dead_lettered_at`` as a datetime."""
        return parse_timestamp(self.dead_lettered_at)


def dlq_subject(prefix: str, original_subject: str) -> str:
    """``dlq.<env>.<consuming app>.`` followed by the original subject without its env."""
    rest = original_subject.split(".", 1)[1] if "." in original_subject else original_subject
    return f"{prefix}.{rest}"


def build_record(failure: FailedDelivery, *, app: str, codec: Codec) -> DeadLetterRecord:
    """Turn a failed delivery into a record; a JSON body is kept decoded when possible."""
    envelope: dict[str, Any] | None = None
    raw: str | None = None
    event_id: str | None = None
    content_type = failure.headers.get(CONTENT_TYPE_HEADER) or None
    try:
        decoded = CodecReader(codec).decode(failure.body, content_type)
    except MalformedEnvelopeError:
        decoded = None
    if decoded is not None:
        event_id = decoded.event_id
        if wire_format(content_type) is WireFormat.JSON:
            envelope = decoded.to_dict()
    if envelope is None:  # other codecs' bytes are kept, and replayed, as received
        raw = base64.b64encode(failure.body).decode("ascii")
    error = failure.error
    return DeadLetterRecord(
        event_id=event_id,
        reason=failure.reason.value,
        original_subject=failure.subject,
        original_stream=failure.stream,
        original_seq=failure.stream_seq,
        consumer=failure.consumer,
        headers=dict(failure.headers),
        envelope=envelope,
        raw_base64=raw,
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
    )


class DeadLetterWriter:
    """Publishes records to the DLQ stream with a short timeout and few tries.

    ``publish`` is FastStream's ``broker.publish`` (or anything with its signature), so DLQ
    writes show up in the broker's telemetry like any other publish.
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
    ) -> None:
        self.app = app
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.codec = codec
        self.timeout = timeout
        self.attempts = attempts

    async def write(
        self, failure: FailedDelivery, publish: Callable[..., Awaitable[Any]]
    ) -> DeadLetterRecord:
        """Store one record; raise :class:`PublishError` if the DLQ did not confirm it."""
        record = build_record(failure, app=self.app, codec=self.codec)
        headers = {
            "Nats-Msg-Id": _dedup_id(failure),
            "content-type": "application/json",
            "x-dead-letter": "true",
            "x-dlq-reason": record.reason,
            "x-deliveries": str(record.attempts),
            "x-event-id": record.event_id or "",
            "x-original-subject": failure.subject,
        }
        subject = dlq_subject(self.subject_prefix, failure.subject)
        body = record.to_json()
        last: BaseException | None = None
        for attempt in range(self.attempts):
            try:
                await publish(
                    body, subject, headers=dict(headers), stream=self.stream, timeout=self.timeout
                )
            except RETRIABLE_PUBLISH_ERRORS as exc:
                last = exc
                if attempt + 1 < self.attempts:
                    await asyncio.sleep(0.05 * (attempt + 1))
            else:
                return record
        raise PublishError(
            f"dead-letter write to {subject!r} failed after {self.attempts} attempts: {last!r}"
        ) from last


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
