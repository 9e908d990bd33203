"""A dead-letter record: its fields, its stored JSON form, and a reader that trusts nothing.

Anyone allowed to publish on a DLQ's subjects can store anything there, so reading a record
checks the type of every field and raises :class:`DeadLetterRecordError` for anything else;
the record's own subject in the DLQ stream (``dlq_subject``) is read from the stream, not
from the body.

Records written since version 2 keep the received bytes exactly (``raw_base64``), with their
size and SHA-256; the decoded ``envelope`` is only there for people to read. Records of
version 1 (the first releases) kept the decoded envelope, and the bytes only when they
were not an envelope; they are still read, and replayed from the envelope.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Final

from pydantic_core import from_json, to_json

from .envelope import parse_timestamp
from .errors import DeadLetterRecordError, RecordTruncatedError

__all__ = ("RECORD_VERSION", "DeadLetterReason", "DeadLetterRecord")

RECORD_VERSION: Final = 2
"""Version of the stored form: 2 keeps the received bytes, 1 (first releases) did not."""


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
class DeadLetterRecord:
    """One dead-lettered event as stored in (and read back from) the DLQ stream."""

    event_id: str | None
    """The envelope's event id, if the body was readable."""
    reason: str
    """A :class:`DeadLetterReason` value."""
    original_subject: str
    """The subject the event was delivered on (as the record says; see ``dlq_subject``)."""
    original_stream: str | None
    original_seq: int | None
    consumer: str | None
    headers: dict[str, str]
    """Every header of the original delivery."""
    envelope: dict[str, Any] | None
    """The decoded envelope, for people to read; ``None`` when the body was not an envelope
    or when keeping it would have made the record too large (``raw_base64`` has the bytes)."""
    raw_base64: str | None
    """The received bytes, base64 (version 2: always; only their head if ``raw_truncated``)."""
    error_type: str | None
    error_message: str | None
    traceback: str | None
    attempts: int
    first_failure_at: str | None
    last_failure_at: str
    dead_lettered_at: str
    app: str
    host: str
    raw_size: int | None = None
    """Size of the received bytes (version 2)."""
    raw_sha256: str | None = None
    """SHA-256 of the received bytes, hex (version 2)."""
    raw_truncated: bool = False
    """Only the head of the bytes is kept: the whole record would exceed the server's
    maximum payload. Replay then republishes the original from its stream if it is still
    there and matches ``raw_sha256``."""
    record_version: int = 1
    """2 for records that keep the received bytes; 1 for records of the first releases."""
    content_type: str | None = None
    """The original ``content-type`` header: which codec wrote the bytes (JSON if none)."""
    dlq_seq: int | None = None
    """Sequence of the record in the DLQ stream, when read back."""
    dlq_subject: str | None = None
    """The record's own subject in the DLQ stream, when read back: what replay trusts."""

    def to_json(self) -> bytes:
        """The stored form (without ``dlq_seq`` and ``dlq_subject``, which the stream has)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        del data["dlq_seq"], data["dlq_subject"]
        return to_json(data)

    @classmethod
    def from_json(
        cls, payload: bytes, *, dlq_seq: int | None = None, dlq_subject: str | None = None
    ) -> DeadLetterRecord:
        """Read a stored record; raise :class:`DeadLetterRecordError` if it is not one."""
        try:
            data = from_json(payload)
        except ValueError as exc:
            raise DeadLetterRecordError(f"not JSON: {_first_line(exc)}") from None
        if not isinstance(data, dict):
            raise DeadLetterRecordError(f"a JSON {type(data).__name__}, not an object")
        fields: dict[str, Any] = {}
        for name, check in _FIELDS.items():
            fields[name] = check(name, data.get(name, _MISSING))
        for name in ("last_failure_at", "dead_lettered_at", "first_failure_at"):
            if fields[name] is not None:
                _check_time(name, fields[name])
        return cls(**fields, dlq_seq=dlq_seq, dlq_subject=dlq_subject)

    @property
    def topic(self) -> str:
        """The original topic: from the DLQ subject when read back, else the original subject."""
        if self.dlq_subject is not None:
            parts = self.dlq_subject.split(".", 4)
            if len(parts) == 5:
                return parts[4]
        parts = self.original_subject.split(".", 2)
        return parts[2] if len(parts) == 3 else self.original_subject

    @property
    def original_bytes(self) -> bytes:
        """Exactly the bytes that were received (version 1 records: the envelope re-encoded).

        Raises :class:`RecordTruncatedError` when only their head was kept, and
        :class:`DeadLetterRecordError` when the stored bytes are not valid base64 or do not
        match ``raw_size`` / ``raw_sha256``.
        """
        if self.raw_truncated:
            raise RecordTruncatedError(
                f"the record keeps only the first bytes of a {self.raw_size}-byte event"
            )
        if self.raw_base64 is not None:
            try:
                data = base64.b64decode(self.raw_base64, validate=True)
            except (binascii.Error, ValueError):
                raise DeadLetterRecordError("raw_base64 is not valid base64") from None
            if self.raw_size is not None and len(data) != self.raw_size:
                raise DeadLetterRecordError(
                    f"raw_base64 holds {len(data)} bytes, the record says {self.raw_size}"
                )
            if self.raw_sha256 is not None and hashlib.sha256(data).hexdigest() != self.raw_sha256:
                raise DeadLetterRecordError("raw_base64 does not match the record's raw_sha256")
            return data
        if self.envelope is not None:
            return to_json(self.envelope)
        raise DeadLetterRecordError("the record holds neither the original bytes nor an envelope")

    @property
    def raw_head(self) -> bytes:
        """The kept bytes (all of them, or the head when ``raw_truncated``); may be empty."""
        if self.raw_base64 is None:
            return b""
        try:
            return base64.b64decode(self.raw_base64, validate=True)
        except (binascii.Error, ValueError):
            return b""

    @property
    def dead_lettered_time(self) -> datetime:
        """``dead_lettered_at`` as a datetime."""
        return parse_timestamp(self.dead_lettered_at)


_MISSING: Final = object()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DeadLetterRecordError(f"field {name!r} is {_kind(value)}, not a string")
    return value


def _optional_text(name: str, value: Any) -> str | None:
    return None if value is None or value is _MISSING else _text(name, value)


def _count(name: str, value: Any) -> int:
    # bool is an int to Python, not to a record.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DeadLetterRecordError(f"field {name!r} is {_kind(value)}, not a count")
    return value


def _optional_count(name: str, value: Any) -> int | None:
    return None if value is None or value is _MISSING else _count(name, value)


def _flag(name: str, value: Any) -> bool:
    if value is _MISSING:
        return False
    if not isinstance(value, bool):
        raise DeadLetterRecordError(f"field {name!r} is {_kind(value)}, not true/false")
    return value


def _version(name: str, value: Any) -> int:
    return 1 if value is _MISSING else _count(name, value)


def _headers(name: str, value: Any) -> dict[str, str]:
    if value is _MISSING or value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DeadLetterRecordError(f"field {name!r} is not an object of strings")
    return value


def _object(name: str, value: Any) -> dict[str, Any] | None:
    if value is None or value is _MISSING:
        return None
    if not isinstance(value, dict):
        raise DeadLetterRecordError(f"field {name!r} is {_kind(value)}, not an object")
    return value


def _kind(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    return "null" if value is None else f"a {type(value).__name__}"


def _check_time(name: str, value: str) -> None:
    try:
        parse_timestamp(value)
    except ValueError:
        raise DeadLetterRecordError(f"field {name!r} is not an ISO-8601 time") from None


_FIELDS: Final = {
    "event_id": _optional_text,
    "reason": _text,
    "original_subject": _text,
    "original_stream": _optional_text,
    "original_seq": _optional_count,
    "consumer": _optional_text,
    "headers": _headers,
    "envelope": _object,
    "raw_base64": _optional_text,
    "error_type": _optional_text,
    "error_message": _optional_text,
    "traceback": _optional_text,
    "attempts": _count,
    "first_failure_at": _optional_text,
    "last_failure_at": _text,
    "dead_lettered_at": _text,
    "app": _text,
    "host": _text,
    "raw_size": _optional_count,
    "raw_sha256": _optional_text,
    "raw_truncated": _flag,
    "record_version": _version,
    "content_type": _optional_text,
}
