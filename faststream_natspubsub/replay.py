"""What a replay may publish, decided from the record's own DLQ subject, never from its body.

A record is untrusted: anyone allowed to publish on ``dlq.<env>.<app>.>`` can store one.
Replay therefore publishes only to the subject that the record's DLQ subject encodes
(``dlq.<env>.<app>.<source app>.<topic>`` → ``<env>.<source app>.<topic>``), checks every
token, sends the received bytes unchanged, and copies only headers that cannot steer
JetStream (no ``Nats-*`` header of the record is sent: ``Nats-Rollup`` alone could purge a
stream). What replay adds goes into headers, so the body stays exactly as received:

- ``Nats-Msg-Id``: ``<event_id>:replay:<dlq stream>:<dlq seq>`` (a replay of one record
  twice within the duplicate window is stored once);
- ``Nats-Expected-Stream``: the stream that holds the subject, as the server says;
- ``Natspubsub-Replay-Count``: how many times the event has been replayed, this one included;
- ``Natspubsub-Replayed-From``: ``<dlq stream>:<dlq seq>``;
- ``Natspubsub-Replay-Reason``: the record's reason (a known reason, else ``unknown``);
- ``Natspubsub-Replayed-At``: when.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from .dlq_record import DeadLetterReason
from .envelope import CONTENT_ENCODING_HEADER, format_timestamp
from .errors import ReplayRefusedError
from .publishing import PublishResult

if TYPE_CHECKING:
    from .dlq_record import DeadLetterRecord

__all__ = (
    "REPLAY_COUNT_HEADER",
    "REPLAY_HEADERS",
    "ReplayResult",
    "ReplayTarget",
    "replay_headers",
    "replay_target",
)

REPLAY_COUNT_HEADER: Final = "Natspubsub-Replay-Count"
REPLAYED_FROM_HEADER: Final = "Natspubsub-Replayed-From"
REPLAY_REASON_HEADER: Final = "Natspubsub-Replay-Reason"
REPLAYED_AT_HEADER: Final = "Natspubsub-Replayed-At"
REPLAY_HEADERS: Final = frozenset(
    {REPLAY_COUNT_HEADER, REPLAYED_FROM_HEADER, REPLAY_REASON_HEADER, REPLAYED_AT_HEADER}
)

# A subject token replay accepts: what NatsPubsub apps and topics are made of (1.0 apps
# use '_' and capitals), and nothing that is a wildcard, a '$' or a space.
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]+")
# nats-py's rule for header names; other names would make the publish raise.
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SAFE_ID: Final = re.compile(r"[A-Za-z0-9_.:=-]{1,200}")
_KNOWN_REASONS: Final = frozenset(reason.value for reason in DeadLetterReason)
# A replay count above this is not a count.
_MAX_COUNT_DIGITS: Final = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayTarget:
    """Where a record's event goes back to, derived from the record's DLQ subject."""

    subject: str
    """``<env>.<source app>.<topic>``."""
    source_app: str
    topic: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayResult(PublishResult):
    """A :class:`PublishResult` plus what happened to the record afterwards."""

    dlq_seq: int | None = None
    """The replayed record's sequence in the DLQ stream."""
    record_deleted: bool = False
    """Whether the record was removed from the DLQ (``keep=True``: never)."""
    delete_error: str | None = None
    """Why the record is still there although it should have been removed."""


def replay_target(record: DeadLetterRecord, *, env: str, prefix: str) -> ReplayTarget:
    """The subject a replay of ``record`` may publish to; :class:`ReplayRefusedError` if none.

    ``prefix`` is the DLQ's ``dlq.<env>.<app>``. The record's ``original_subject`` must
    agree with its DLQ subject: a record claiming another subject was not written here.
    """
    name = _record_name(record)
    dlq_subject = record.dlq_subject
    if dlq_subject is None:
        raise ReplayRefusedError(f"{name} was not read from the DLQ stream: its subject is unknown")
    if not dlq_subject.startswith(prefix + "."):
        raise ReplayRefusedError(f"{name} is stored on {dlq_subject!r}, outside {prefix}.>")
    tokens = dlq_subject[len(prefix) + 1 :].split(".")
    if len(tokens) < 2:
        raise ReplayRefusedError(f"{name} is stored on {dlq_subject!r}, which names no topic")
    for token in tokens:
        if not _TOKEN.fullmatch(token):
            raise ReplayRefusedError(
                f"{name} is stored on {dlq_subject!r}: token {token!r} is not a topic part"
            )
    subject = ".".join((env, *tokens))
    if record.original_subject != subject:
        raise ReplayRefusedError(
            f"{name} says its original subject is {record.original_subject!r}, but it is "
            f"stored as a record of {subject!r}; refusing a record that contradicts itself"
        )
    return ReplayTarget(subject=subject, source_app=tokens[0], topic=".".join(tokens[1:]))


def replay_headers(
    record: DeadLetterRecord, *, dlq_stream: str, stream: str, exact_bytes: bool
) -> dict[str, str]:
    """The headers of a replay: the record's safe headers plus the replay's own.

    ``exact_bytes`` is False for version 1 records, whose body is a re-encoded envelope:
    their ``Content-Encoding`` no longer applies.
    """
    headers: dict[str, str] = {}
    for key, value in record.headers.items():
        lowered = key.lower()
        if (
            lowered.startswith("nats-")
            or key in REPLAY_HEADERS
            or not _HEADER_NAME.fullmatch(key)
            or _CONTROL.search(value)
            or (not exact_bytes and lowered == CONTENT_ENCODING_HEADER.lower())
        ):
            continue
        headers[key] = value
    event_id = record.event_id if record.event_id and _SAFE_ID.fullmatch(record.event_id) else "raw"
    headers["Nats-Msg-Id"] = f"{event_id}:replay:{dlq_stream}:{record.dlq_seq}"
    headers["Nats-Expected-Stream"] = stream
    now = format_timestamp(datetime.now(timezone.utc))
    headers["Nats-Published-At"] = now
    headers[REPLAY_COUNT_HEADER] = str(replay_count(record) + 1)
    headers[REPLAYED_FROM_HEADER] = f"{dlq_stream}:{record.dlq_seq}"
    headers[REPLAY_REASON_HEADER] = record.reason if record.reason in _KNOWN_REASONS else "unknown"
    headers[REPLAYED_AT_HEADER] = now
    return headers


def replay_count(record: DeadLetterRecord) -> int:
    """How often the record's event had been replayed before it failed again."""
    value = record.headers.get(REPLAY_COUNT_HEADER)
    if value is not None:
        return _count(value)
    # Version 1 replays wrote the count into the envelope's metadata.
    metadata: Any = (record.envelope or {}).get("metadata")
    legacy = metadata.get("replay_count") if isinstance(metadata, dict) else None
    return _count(str(legacy)) if isinstance(legacy, int | str) else 0


def _count(text: str) -> int:
    text = text.strip()
    ok = text.isascii() and text.isdigit() and len(text) <= _MAX_COUNT_DIGITS
    return int(text) if ok else 0


def _record_name(record: DeadLetterRecord) -> str:
    return f"record seq {record.dlq_seq}"
