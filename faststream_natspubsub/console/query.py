"""Finding dead-letter records: filters, pages newest first, single records, text search.

Filters are defined on what the server vouches for where it can: the topic is the record's
DLQ subject, the time is when the server stored the record. The reason is the record's
``x-dlq-reason`` header and the text is searched in the body's error fields; both were
written by whoever published the record, like everything else in it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from nats.js.errors import NotFoundError
from pydantic_core import from_json

from ..cli.durations import parse_since
from ..dlq import DeadLetterRecord
from ..errors import SubjectError
from ..subjects import normalize_app, validate_topic
from .index import DeadLetterIndex, IndexEntry, IndexFilter, to_ns
from .scan import scan_stream

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = (
    "DeadLetterFilter",
    "FilterError",
    "LoadedRecord",
    "Page",
    "error_texts",
    "load_record",
    "load_records",
    "page",
    "subject_matcher",
)

# Rows per page.
PAGE_SIZE: Final = 50
# Bodies fetched at once by ``get_msg`` (each a request; concurrent, not one after another).
FETCH_CONCURRENCY: Final = 64
# A text search reads at most this many candidate bodies, or for this long, per page.
TEXT_SEARCH_BUDGET: Final = 20_000
TEXT_SEARCH_SECONDS: Final = 2.0
# Candidates examined per round of a text search.
_SEARCH_CHUNK: Final = 2_000
# Longest text searched for; filters come from a URL.
_MAX_TEXT: Final = 200
# A scan reads about six records in the time of one ``get_msg``: scan a range that dense.
_SCAN_DENSITY: Final = 6


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
    """Case-insensitive text in the error type, message or traceback."""

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
        """The part of the filter the index answers (all but the text)."""
        return IndexFilter(
            subjects=None if self._all_subjects else subject_matcher(self.subject_pattern(prefix)),
            reason=self.reason,
            since_ns=to_ns(self.since) if self.since else None,
            # Stored times have nanoseconds, a filter microseconds: "until" takes the whole µs.
            until_ns=to_ns(self.until) + 999 if self.until else None,
            upto_seq=upto_seq,
        )

    @property
    def _all_subjects(self) -> bool:
        return not self.topic and not self.source_app

    def text_matches(self, record: DeadLetterRecord | None) -> bool:
        """Whether the record's error mentions the text (always true without a text filter)."""
        if not self.text:
            return True
        needle = self.text.casefold()
        return any(needle in value.casefold() for value in error_texts(record))

    def without_text(self) -> DeadLetterFilter:
        """The same filter without the text part."""
        return replace(self, text=None)


def error_texts(record: DeadLetterRecord | None) -> list[str]:
    """The error type, message and traceback that are strings (fields are untrusted)."""
    if record is None:
        return []
    values = (record.error_type, record.error_message, record.traceback)
    return [value for value in values if isinstance(value, str)]


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
class Row:
    """One line of the list: what the index knows, and the body when it could be read."""

    entry: IndexEntry
    loaded: LoadedRecord | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One page of the list, newest first, with the cursors to move on."""

    rows: list[Row]
    total: int | None
    """Matching records, when known without reading bodies (``None`` with a text filter)."""
    newer: int | None = None
    """``after`` cursor of the previous (newer) page."""
    older: int | None = None
    """``before`` cursor of the next (older) page."""
    searched: int = 0
    """Bodies read by a text search."""
    search_stopped_at: int | None = None
    """A text search ran out of budget below this sequence: more may match further back."""
    upto: int = 0
    """Last sequence the page could see (the snapshot bulk actions are limited to)."""
    timings: dict[str, float] = field(default_factory=dict)


async def page(
    nc: Client,
    index: DeadLetterIndex,
    flt: DeadLetterFilter,
    *,
    prefix: str,
    before: int | None = None,
    after: int | None = None,
    limit: int = PAGE_SIZE,
) -> Page:
    """The page of records older than ``before`` (or newer than ``after``), newest first."""
    upto = index.state.last_seq
    where = flt.index_filter(prefix)
    if flt.text:
        return await _text_page(nc, index, flt, where, before=before, limit=limit, upto=upto)
    if after is not None:
        entries = index.oldest(where, after=after, limit=limit)[::-1]
    else:
        entries = index.newest(where, before=before, limit=limit)
    loaded = await load_records(nc, index.stream, [e.seq for e in entries])
    rows = [Row(entry=e, loaded=loaded.get(e.seq)) for e in entries]
    return Page(
        rows=rows,
        total=index.count(where),
        newer=_newer_cursor(index, where, rows),
        older=_older_cursor(index, where, rows),
        upto=upto,
    )


def _newer_cursor(index: DeadLetterIndex, where: IndexFilter, rows: list[Row]) -> int | None:
    if not rows:
        return None
    top = rows[0].entry.seq
    return top if index.oldest(where, after=top, limit=1) else None


def _older_cursor(index: DeadLetterIndex, where: IndexFilter, rows: list[Row]) -> int | None:
    if not rows:
        return None
    bottom = rows[-1].entry.seq
    return bottom if index.newest(where, before=bottom, limit=1) else None


async def _text_page(
    nc: Client,
    index: DeadLetterIndex,
    flt: DeadLetterFilter,
    where: IndexFilter,
    *,
    before: int | None,
    limit: int,
    upto: int,
) -> Page:
    """Newest-first records whose error mentions the text, reading bodies within a budget.

    A text page cannot go back to newer records (that would mean searching again); the
    list offers the first page instead.
    """
    found: list[Row] = []
    searched = 0
    cursor = before
    deadline = time.monotonic() + TEXT_SEARCH_SECONDS
    older: int | None = None
    stopped_at: int | None = None
    while True:
        candidates = index.newest(where, before=cursor, limit=_SEARCH_CHUNK)
        if not candidates:
            break
        loaded = await _bodies(nc, index.stream, candidates)
        for entry in candidates:
            searched += 1
            record = loaded.get(entry.seq)
            if record is not None and flt.text_matches(record.record):
                found.append(Row(entry=entry, loaded=record))
                if len(found) >= limit:
                    break
        if len(found) >= limit:
            last = found[-1].entry.seq
            older = last if index.newest(where, before=last, limit=1) else None
            break
        cursor = candidates[-1].seq
        if searched >= TEXT_SEARCH_BUDGET or time.monotonic() > deadline:
            if index.newest(where, before=cursor, limit=1):
                older = stopped_at = cursor
            break
    return Page(
        rows=found,
        total=None,
        older=older,
        searched=searched,
        search_stopped_at=stopped_at,
        upto=upto,
    )


async def _bodies(nc: Client, stream: str, entries: list[IndexEntry]) -> dict[int, LoadedRecord]:
    """Bodies of index entries: by a scan when the range is dense enough, else by sequence."""
    if not entries:
        return {}
    low, high = min(e.seq for e in entries), max(e.seq for e in entries)
    if len(entries) * _SCAN_DENSITY < high - low + 1:
        return await load_records(nc, stream, [e.seq for e in entries])
    wanted = {e.seq for e in entries}
    found: dict[int, LoadedRecord] = {}
    async for batch in scan_stream(nc, stream, start_seq=low, stop_seq=high):
        for message in batch:
            if message.seq in wanted:
                found[message.seq] = _loaded(
                    message.seq,
                    message.subject,
                    datetime.fromtimestamp(message.time_ns / 1e9, timezone.utc),
                    dict(message.headers),
                    message.data,
                )
    return found


async def load_records(nc: Client, stream: str, seqs: list[int]) -> dict[int, LoadedRecord]:
    """The stored messages at ``seqs`` (missing ones are left out), fetched concurrently."""
    gate = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(seq: int) -> LoadedRecord | None:
        async with gate:
            return await load_record(nc, stream, seq)

    loaded = await asyncio.gather(*(one(seq) for seq in seqs))
    return {record.seq: record for record in loaded if record is not None}


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
