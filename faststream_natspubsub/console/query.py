"""Finding dead-letter records: filters, pages newest first, single records.

Filters are defined on what the server vouches for where it can: the topic is the record's
DLQ subject, the time is when the server stored the record. The reason and the error text come
from the record itself, written by whoever published it, like everything else in it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from nats.js.errors import NotFoundError
from pydantic_core import from_json

from ..cli.durations import parse_since
from ..dlq import DeadLetterRecord
from ..errors import SubjectError
from ..subjects import normalize_app, validate_topic
from .index import DeadLetterIndex, IndexEntry, IndexFilter, to_ns

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = (
    "DeadLetterFilter",
    "FilterError",
    "LoadedRecord",
    "Page",
    "load_record",
    "page",
    "subject_matcher",
)

# Rows per page.
PAGE_SIZE: Final = 50
# Longest text searched for; filters come from a URL.
_MAX_TEXT: Final = 200


class FilterError(ValueError):
    """A filter value the console cannot use; the message is shown next to the filter bar."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterFilter:
    """Which records to show or act on; every field optional."""

    topic: str | None = None
    """Original topic, wildcards ``*`` and ``>`` allowed (``order.*``)."""
    source_app: str | None = None
    """The app that published the original event."""
    reason: str | None = None
    since: datetime | None = None
    """Stored at or after."""
    until: datetime | None = None
    """Stored at or before."""
    text: str | None = None
    """Case-insensitive text in the error type or message."""

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> DeadLetterFilter:
        """The filter of a URL's query; raises :class:`FilterError` naming the bad field."""
        values: dict[str, Any] = {}
        topic = params.get("topic", "").strip()
        if topic:
            try:
                values["topic"] = validate_topic(topic)
            except SubjectError as exc:
                raise FilterError(f"topic: {exc}") from None
        source_app = params.get("source_app", "").strip()
        if source_app:
            try:
                values["source_app"] = normalize_app(source_app)
            except SubjectError as exc:
                raise FilterError(f"app: {exc}") from None
        reason = params.get("reason", "").strip()
        if reason:
            values["reason"] = reason[:_MAX_TEXT]
        for name in ("since", "until"):
            text = params.get(name, "").strip()
            if text:
                try:
                    values[name] = parse_since(text)
                except ValueError as exc:
                    raise FilterError(f"{name}: {exc}") from None
        text = params.get("q", "").strip()
        if text:
            values["text"] = text[:_MAX_TEXT]
        return cls(**values)

    def to_query(self) -> dict[str, str]:
        """Query parameters that give this filter back (``from_query`` reads them)."""
        query: dict[str, str] = {}
        if self.topic:
            query["topic"] = self.topic
        if self.source_app:
            query["source_app"] = self.source_app
        if self.reason:
            query["reason"] = self.reason
        if self.since:
            query["since"] = _iso(self.since)
        if self.until:
            query["until"] = _iso(self.until)
        if self.text:
            query["q"] = self.text
        return query

    @property
    def active(self) -> bool:
        """Whether anything is filtered."""
        return bool(self.to_query())

    @property
    def subject_only(self) -> bool:
        """Whether the server can apply the whole filter (topic and app are subjects)."""
        return not (self.reason or self.since or self.until or self.text)

    def subject_pattern(self, prefix: str) -> str:
        """The DLQ subject filter for the server: ``<prefix>.<app or *>.<topic or >>``."""
        if not self.topic and not self.source_app:
            return f"{prefix}.>"
        return f"{prefix}.{self.source_app or '*'}.{self.topic or '>'}"

    def index_filter(self, prefix: str, *, upto_seq: int | None = None) -> IndexFilter:
        """The filter as the index applies it."""
        return IndexFilter(
            subjects=None if self._all_subjects else subject_matcher(self.subject_pattern(prefix)),
            reason=self.reason,
            text=self.text,
            since_ns=to_ns(self.since) if self.since else None,
            # Stored times have nanoseconds, a filter microseconds: "until" takes the whole µs.
            until_ns=to_ns(self.until) + 999 if self.until else None,
            upto_seq=upto_seq,
        )

    @property
    def _all_subjects(self) -> bool:
        return not self.topic and not self.source_app


def subject_matcher(pattern: str) -> Callable[[str], bool]:
    """A test of subjects against a NATS pattern (``*`` one token, ``>`` the rest)."""
    wanted = pattern.split(".")

    def matches(subject: str) -> bool:
        tokens = subject.split(".")
        for index, part in enumerate(wanted):
            if part == ">":
                return len(tokens) > index
            if index >= len(tokens) or part not in ("*", tokens[index]):
                return False
        return len(tokens) == len(wanted)

    return matches


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedRecord:
    """A DLQ message as stored, and the record it holds when it is one."""

    seq: int
    subject: str
    """The DLQ subject it was published on."""
    stored_at: datetime | None
    headers: dict[str, str]
    """Headers of the DLQ message (``x-dlq-reason``...), not of the original event."""
    data: bytes
    record: DeadLetterRecord | None
    problem: str | None = None
    """Why the body is not a readable record."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One page of the list, newest first, with the cursors to move on."""

    rows: list[IndexEntry]
    total: int
    """Matching records."""
    newer: int | None = None
    """``after`` cursor of the previous (newer) page."""
    older: int | None = None
    """``before`` cursor of the next (older) page."""
    upto: int = 0
    """Last sequence the page could see (the snapshot bulk actions are limited to)."""


def page(
    index: DeadLetterIndex,
    flt: DeadLetterFilter,
    *,
    prefix: str,
    before: int | None = None,
    after: int | None = None,
    limit: int = PAGE_SIZE,
) -> Page:
    """The page of records older than ``before`` (or newer than ``after``), newest first.

    Everything comes from the index (refreshed by the caller): no record is read.
    """
    where = flt.index_filter(prefix)
    total = index.count(where, key=tuple(sorted(flt.to_query().items())))
    if not total:
        rows = []
    elif after is not None:
        rows = index.oldest(where, after=after, limit=limit)[::-1]
    else:
        rows = index.newest(where, before=before, limit=limit)
    newer = older = None
    if rows and index.oldest(where, after=rows[0].seq, limit=1):
        newer = rows[0].seq
    if rows and index.newest(where, before=rows[-1].seq, limit=1):
        older = rows[-1].seq
    return Page(
        rows=rows,
        total=total,
        newer=newer,
        older=older,
        upto=index.state.last_seq,
    )


async def load_record(nc: Client, stream: str, seq: int) -> LoadedRecord | None:
    """The stored message at ``seq`` of ``stream``, or ``None`` when there is none."""
    try:
        raw = await nc.jsm().get_msg(stream, seq=seq)
    except NotFoundError:
        return None
    return _loaded(seq, raw.subject or "", raw.time, dict(raw.headers or {}), raw.data or b"")


def _loaded(
    seq: int, subject: str, stored_at: datetime | None, headers: dict[str, str], data: bytes
) -> LoadedRecord:
    record: DeadLetterRecord | None = None
    problem: str | None = None
    try:
        parsed = from_json(data)
        if not isinstance(parsed, dict):
            raise TypeError("not a JSON object")
        record = DeadLetterRecord.from_json(data, dlq_seq=seq)
    except (ValueError, TypeError) as exc:
        problem = f"not a dead-letter record: {exc}"
    return LoadedRecord(
        seq=seq,
        subject=subject,
        stored_at=stored_at,
        headers={str(k): str(v) for k, v in headers.items()},
        data=data,
        record=record,
        problem=problem,
    )


def _iso(moment: datetime) -> str:
    utc = moment.astimezone(timezone.utc)
    text = utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")
