"""An in-memory index of a DLQ stream's records, kept up to date incrementally.

Counting records by reason, filtering by reason, time or error text and paging newest first
need a look at every record; JetStream can only count by subject. One scan reads what a list
shows of each record (reason, attempts, event id, error type and message, subject, stored
time), once; afterwards each refresh reads only the records stored since. Reading a body costs
about what reading its headers alone does (nats-py parses the headers either way), so the
index is built from the records themselves, not from their ``x-*`` headers. About 200 bytes per
record (20 MB for 100k); tracebacks are left out.

Deletions are noticed without a rescan: the console removes what it deletes itself, and when
the stream holds fewer records than the index, the server's list of deleted sequences says
which. A purge moves the stream's first sequence; a recreated stream has a new creation time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import sys
from array import array
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import nats.errors
from nats.js.errors import NotFoundError
from pydantic_core import from_json, to_json

from ..dlq import DeadLetterRecord
from .errors import ConsoleError
from .scan import ScannedMessage, scan_stream

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = (
    "DEFAULT_INDEX_LIMIT",
    "DeadLetterIndex",
    "IndexBuildingError",
    "IndexEntry",
    "IndexFilter",
    "IndexState",
    "RecordFacts",
    "record_facts",
)

# Records indexed at most (the newest ones); about 200 MB at this size.
DEFAULT_INDEX_LIMIT: Final = 1_000_000
# Record fields are untrusted: an index keeps only this much of each.
_MAX_VALUE: Final = 200
_MAX_MESSAGE: Final = 1_000
# Distinct reasons (and error types) kept apart; a flood of invented ones shares one bucket.
_MAX_REASONS: Final = 250
_MAX_ERROR_TYPES: Final = 10_000
_OTHER: Final = "(other)"
UNREADABLE: Final = "(unreadable)"
"""The reason of a DLQ message that is not a dead-letter record."""
# The fields every record version has (the others have defaults: newer versions added them).
_REQUIRED: Final = frozenset(
    name
    for name, spec in DeadLetterRecord.__dataclass_fields__.items()
    if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
)
# Stored times follow the sequence (a stream's leader stamps messages in order); a time bound
# narrows a search by bisection, allowing this much disorder (clocks of a cluster's servers).
_CLOCK_SKEW_NS: Final = 10 * 1_000_000_000
# Filter counts remembered (they are forgotten at every change of the index anyway).
_COUNTS_KEPT: Final = 64
# Dead entries tolerated before the columns are rebuilt without them.
_COMPACT_AT: Final = 0.25


class IndexBuildingError(ConsoleError):
    """The index is still being built; ``done`` of ``total`` records read so far."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"indexing the DLQ: {done:,} of about {total:,} records read")
        self.done = done
        self.total = total


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What the index knows of one record: all from headers and the server, no body."""

    seq: int
    time_ns: int
    """When the server stored the record."""
    subject: str
    reason: str
    """The record's reason, or :data:`UNREADABLE`."""
    attempts: int
    event_id: str
    error_type: str
    error_message: str
    """The error message (at most 1,000 characters), or why the record is unreadable."""


@dataclass(frozen=True, slots=True)
class IndexState:
    """The stream as the last refresh saw it."""

    exists: bool
    records: int
    """Records in the index."""
    first_seq: int
    last_seq: int
    covered_from: int
    """Lowest sequence indexed: above ``first_seq`` when the stream exceeds the index limit."""
    bytes: int = 0
    created: str | None = None

    @property
    def partial(self) -> bool:
        """Whether older records are left out (the stream holds more than the limit)."""
        return self.covered_from > self.first_seq


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexFilter:
    """A predicate on index entries; ``None`` fields match everything."""

    subjects: Callable[[str], bool] | None = None
    reason: str | None = None
    text: str | None = None
    """Case-insensitive text in the error type or message."""
    since_ns: int | None = None
    until_ns: int | None = None
    upto_seq: int | None = None
    """Only records stored at or before this sequence (what the operator saw)."""


class DeadLetterIndex:
    """The records of one DLQ stream, as columns sorted by sequence."""

    def __init__(
        self, stream: str, *, subject_filter: str, limit: int = DEFAULT_INDEX_LIMIT
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.stream = stream
        self.subject_filter = subject_filter
        self.limit = limit
        self.state = IndexState(exists=False, records=0, first_seq=0, last_seq=0, covered_from=0)
        self._lock = asyncio.Lock()
        self.progress = (0, 0)
        """Records read and to read by the refresh under way."""
        self._reset()

    def _reset(self) -> None:
        self._seqs = array("Q")
        self._times = array("q")
        self._subject_ids = array("I")
        self._reason_ids = array("B")
        self._attempts = array("I")
        self._event_ids: list[str] = []
        self._error_type_ids = array("I")
        self._messages: list[str] = []
        self._alive = bytearray()
        self._dead = 0
        self._subjects = _Names()
        self._reasons = _Names(limit=_MAX_REASONS)
        self._error_types = _Names(limit=_MAX_ERROR_TYPES)
        self._upto = 0  # highest sequence scanned
        self._created: str | None = None
        self._changes()

    def _changes(self) -> None:
        """Remembered counts are of the index before this change."""
        self._version = getattr(self, "_version", 0) + 1
        self._counts: dict[tuple[Hashable, int], int] = {}
        self._tallies: dict[tuple[str, int], dict[str, int]] = {}

    # -- keeping up to date -----------------------------------------------------------------

    async def refresh(self, nc: Client, *, wait: float | None = None) -> IndexState:
        """Read what changed since the last refresh (refreshes run one after another).

        With ``wait``, raises :class:`IndexBuildingError` after that many seconds; the refresh
        goes on in the background (a first build of a large DLQ takes a few seconds).
        """
        task = asyncio.create_task(self._locked_refresh(nc), name=f"index-{self.stream}")
        task.add_done_callback(_retrieve)
        if wait is None:
            return await asyncio.shield(task)
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            raise IndexBuildingError(*self.progress) from None

    async def _locked_refresh(self, nc: Client) -> IndexState:
        async with self._lock:
            self.state = await self._refresh(nc)
            return self.state

    async def _refresh(self, nc: Client) -> IndexState:
        try:
            info = await nc.jsm().stream_info(self.stream)
        except NotFoundError:
            self._reset()
            return IndexState(exists=False, records=0, first_seq=0, last_seq=0, covered_from=0)
        state = info.state
        created = await _created(nc, self.stream, info)
        if created != self._created or state.last_seq < self._upto:
            self._reset()  # a new stream under the same name
            self._created = created
        cover_from = max(state.first_seq, state.last_seq - self.limit + 1, 1)
        self._drop_below(cover_from)
        if state.last_seq > self._upto and state.messages:
            start = max(self._upto + 1, cover_from)
            self.progress = (0, max(0, state.last_seq - start + 1))
            async for batch in scan_stream(
                nc,
                self.stream,
                start_seq=start,
                filter_subject=self.subject_filter,
            ):
                self._append(batch)
                self.progress = (self.progress[0] + len(batch), self.progress[1])
            self._upto = max(self._upto, state.last_seq)
            self._drop_below(max(cover_from, self._upto - self.limit + 1))
        # More indexed than stored: someone else deleted records. (A partial index cannot
        # tell so exactly; deletions there are noticed when a record is opened.)
        if self._live_upto(state.last_seq) > state.messages:
            await self._forget_deleted(nc, cover_from)
        return IndexState(
            exists=True,
            records=len(self._seqs) - self._dead,
            first_seq=state.first_seq,
            last_seq=state.last_seq,
            covered_from=cover_from,
            bytes=state.bytes,
            created=created or None,
        )

    async def _forget_deleted(self, nc: Client, cover_from: int) -> None:
        """Drop entries of records someone else deleted, by the server's deleted list."""
        try:
            reply = await nc.request(
                f"$JS.API.STREAM.INFO.{self.stream}",
                to_json({"deleted_details": True}),
                timeout=5.0,
            )
            deleted = from_json(reply.data).get("state", {}).get("deleted") or []
        except (nats.errors.Error, TimeoutError, ValueError) as exc:
            raise ConsoleError(f"cannot read the deleted records of {self.stream}: {exc}") from exc
        self.remove(int(seq) for seq in deleted if int(seq) >= cover_from)

    def _append(self, batch: Iterable[ScannedMessage]) -> None:
        for message in batch:
            if message.seq <= self._upto:
                continue  # already indexed
            facts = record_facts(message.data)
            self._seqs.append(message.seq)
            self._times.append(message.time_ns)
            self._subject_ids.append(self._subjects.id(message.subject))
            self._reason_ids.append(self._reasons.id(facts.reason))
            self._attempts.append(facts.attempts)
            self._event_ids.append(facts.event_id)
            self._error_type_ids.append(self._error_types.id(facts.error_type))
            self._messages.append(facts.error_message)
            self._alive.append(1)
            self._upto = max(self._upto, message.seq)
        self._changes()

    def _drop_below(self, seq: int) -> None:
        cut = bisect.bisect_left(self._seqs, seq)
        if cut:
            self._dead -= self._alive[:cut].count(0)
            for column in self._columns():
                del column[:cut]
            self._changes()

    def _columns(self) -> tuple[Any, ...]:
        return (
            self._seqs,
            self._times,
            self._subject_ids,
            self._reason_ids,
            self._attempts,
            self._event_ids,
            self._error_type_ids,
            self._messages,
            self._alive,
        )

    def _live_upto(self, seq: int) -> int:
        end = bisect.bisect_right(self._seqs, seq)
        return end - self._alive[:end].count(0)

    def remove(self, seqs: Iterable[int]) -> int:
        """Forget records (deleted by the console or found deleted); returns how many."""
        removed = 0
        for seq in seqs:
            position = self._position(seq)
            if position is not None and self._alive[position]:
                self._alive[position] = 0
                removed += 1
        self._dead += removed
        if removed:
            self._changes()
        if self._dead > _COMPACT_AT * max(len(self._seqs), 1):
            self._compact()
        return removed

    def _compact(self) -> None:
        keep = [i for i, alive in enumerate(self._alive) if alive]
        self._seqs = array("Q", (self._seqs[i] for i in keep))
        self._times = array("q", (self._times[i] for i in keep))
        self._subject_ids = array("I", (self._subject_ids[i] for i in keep))
        self._reason_ids = array("B", (self._reason_ids[i] for i in keep))
        self._attempts = array("I", (self._attempts[i] for i in keep))
        self._event_ids = [self._event_ids[i] for i in keep]
        self._error_type_ids = array("I", (self._error_type_ids[i] for i in keep))
        self._messages = [self._messages[i] for i in keep]
        self._alive = bytearray(b"\x01" * len(keep))
        self._dead = 0

    def _position(self, seq: int) -> int | None:
        position = bisect.bisect_left(self._seqs, seq)
        if position < len(self._seqs) and self._seqs[position] == seq:
            return position
        return None

    def approximate_bytes(self) -> int:
        """Memory held by the index (columns, texts, names)."""
        size = 0
        for column in self._columns():
            size += sys.getsizeof(column)
            if isinstance(column, list):
                size += sum(sys.getsizeof(text) for text in column if text)
        for names in (self._subjects, self._reasons, self._error_types):
            size += sum(sys.getsizeof(name) for name in names.names)
        return size

    # -- reading -------------------------------------------------------------------------

    @property
    def subjects(self) -> list[str]:
        """Every DLQ subject seen (including those of records deleted since)."""
        return list(self._subjects.names)

    @property
    def reasons(self) -> list[str]:
        """Every reason seen."""
        return list(self._reasons.names)

    def entry(self, seq: int) -> IndexEntry | None:
        """The entry of ``seq``, if indexed and not deleted."""
        position = self._position(seq)
        if position is None or not self._alive[position]:
            return None
        return self._entry(position)

    def _entry(self, position: int) -> IndexEntry:
        return IndexEntry(
            seq=self._seqs[position],
            time_ns=self._times[position],
            subject=self._subjects.names[self._subject_ids[position]],
            reason=self._reasons.names[self._reason_ids[position]],
            attempts=self._attempts[position],
            event_id=self._event_ids[position],
            error_type=self._error_types.names[self._error_type_ids[position]],
            error_message=self._messages[position],
        )

    def newest(
        self, where: IndexFilter, *, before: int | None = None, limit: int
    ) -> list[IndexEntry]:
        """Up to ``limit`` matching entries older than ``before``, newest first."""
        end = len(self._seqs) if before is None else bisect.bisect_left(self._seqs, before)
        low, high = self._window(where, 0, end)
        return [self._entry(p) for p in self._matching(where, range(high - 1, low - 1, -1), limit)]

    def oldest(self, where: IndexFilter, *, after: int, limit: int) -> list[IndexEntry]:
        """Up to ``limit`` matching entries newer than ``after``, oldest first."""
        low, high = self._window(where, bisect.bisect_right(self._seqs, after), len(self._seqs))
        return [self._entry(p) for p in self._matching(where, range(low, high), limit)]

    def iter_matching(self, where: IndexFilter, *, newest_first: bool = True) -> Iterator[int]:
        """Sequences of every matching entry."""
        low, high = self._window(where, 0, len(self._seqs))
        order = range(high - 1, low - 1, -1) if newest_first else range(low, high)
        return (self._seqs[p] for p in self._matching(where, order, None))

    def _window(self, where: IndexFilter, low: int, high: int) -> tuple[int, int]:
        """Positions that can match the filter's time and sequence bounds, found by bisection."""
        if where.since_ns is not None:
            low = max(low, bisect.bisect_left(self._times, where.since_ns - _CLOCK_SKEW_NS))
        if where.until_ns is not None:
            high = min(high, bisect.bisect_right(self._times, where.until_ns + _CLOCK_SKEW_NS))
        if where.upto_seq is not None:
            high = min(high, bisect.bisect_right(self._seqs, where.upto_seq))
        return low, max(low, high)

    def count(self, where: IndexFilter, *, key: Hashable | None = None) -> int:
        """How many entries match; with ``key`` (naming the filter) remembered until a change.

        Paging through a filter counts it once, not once per page.
        """
        if where == IndexFilter():
            return len(self._seqs) - self._dead
        cached = self._counts.get((key, self._version)) if key is not None else None
        if cached is not None:
            return cached
        low, high = self._window(where, 0, len(self._seqs))
        found = sum(1 for _ in self._matching(where, range(low, high), None))
        if key is not None:
            if len(self._counts) >= _COUNTS_KEPT:
                self._counts.clear()
            self._counts[(key, self._version)] = found
        return found

    def counts_by(self, column: str) -> dict[str, int]:
        """Live entries per ``"reason"`` or per ``"subject"``, largest first."""
        cached = self._tallies.get((column, self._version))
        if cached is None:
            cached = self._tallies[(column, self._version)] = self._count_by(column)
        return dict(cached)

    def _count_by(self, column: str) -> dict[str, int]:
        ids, names = (
            (self._reason_ids, self._reasons.names)
            if column == "reason"
            else (self._subject_ids, self._subjects.names)
        )
        tally = [0] * len(names)
        for value, alive in zip(ids, self._alive, strict=True):
            if alive:
                tally[value] += 1
        pairs = sorted(((names[i], n) for i, n in enumerate(tally) if n), key=lambda p: -p[1])
        return dict(pairs)

    def times(self) -> tuple[int, int] | None:
        """Stored times (ns) of the oldest and newest live records."""
        alive = [p for p in (self._first_alive(), self._last_alive()) if p is not None]
        if not alive:
            return None
        return self._times[alive[0]], self._times[alive[-1]]

    def _first_alive(self) -> int | None:
        with contextlib.suppress(ValueError):
            return self._alive.index(1)
        return None

    def _last_alive(self) -> int | None:
        with contextlib.suppress(ValueError):
            return self._alive.rindex(1)
        return None

    def event_records(self, event_id: str) -> list[int]:
        """Sequences of live records with this event id, oldest first."""
        if not event_id:
            return []
        return [
            self._seqs[i]
            for i, value in enumerate(self._event_ids)
            if value == event_id and self._alive[i]
        ]

    def _matching(
        self, where: IndexFilter, positions: Iterable[int], limit: int | None
    ) -> Iterator[int]:
        subject_ok = self._allowed(where.subjects, self._subjects.names)
        reason_id = self._reasons.find(where.reason) if where.reason is not None else None
        if where.reason is not None and reason_id is None:
            return
        needle = where.text.casefold() if where.text else None
        # Error types are few: test each once, not once per record.
        type_hit = (
            [needle in name.casefold() for name in self._error_types.names] if needle else None
        )
        since, until, upto = where.since_ns, where.until_ns, where.upto_seq
        alive, subjects, reasons = self._alive, self._subject_ids, self._reason_ids
        times, seqs = self._times, self._seqs
        types, messages = self._error_type_ids, self._messages
        found = 0
        for p in positions:
            if not alive[p]:
                continue
            if subject_ok is not None and not subject_ok[subjects[p]]:
                continue
            if reason_id is not None and reasons[p] != reason_id:
                continue
            if (since is not None and times[p] < since) or (until is not None and times[p] > until):
                continue
            if upto is not None and seqs[p] > upto:
                continue
            if (
                needle is not None
                and type_hit is not None
                and not type_hit[types[p]]
                and needle not in messages[p].casefold()
            ):
                continue
            yield p
            found += 1
            if limit is not None and found >= limit:
                return

    @staticmethod
    def _allowed(test: Callable[[str], bool] | None, names: list[str]) -> list[bool] | None:
        return None if test is None else [test(name) for name in names]


def _retrieve(task: asyncio.Task[IndexState]) -> None:
    """Collect a failed background refresh's error (its waiter may have given up)."""
    if not task.cancelled():
        task.exception()


def to_ns(moment: datetime) -> int:
    """A datetime as Unix nanoseconds (the unit of stored times)."""
    return int(moment.timestamp() * 1_000_000) * 1_000


@dataclass(frozen=True, slots=True)
class RecordFacts:
    """What the index keeps of one record body."""

    reason: str
    attempts: int
    event_id: str
    error_type: str
    error_message: str


async def _created(nc: Client, stream: str, info: Any) -> str:
    """When the stream was created: what tells a stream from a new one of the same name.

    nats-py reads it into ``StreamInfo.created`` from 2.13 on; before, the server's own answer
    to ``$JS.API.STREAM.INFO`` (the same request) has it.
    """
    if hasattr(info, "created"):
        created = info.created
        return created.isoformat() if created else ""
    reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
    try:
        data = from_json(reply.data)
    except ValueError:
        return ""
    value = data.get("created") if isinstance(data, dict) else None
    return value if isinstance(value, str) else ""


def record_facts(data: bytes) -> RecordFacts:
    """The indexed fields of a stored body; every field is checked (records are untrusted)."""
    try:
        record = from_json(data)
    except ValueError as exc:
        return RecordFacts(UNREADABLE, 0, "", "", f"not JSON: {exc}"[:_MAX_VALUE])
    if not isinstance(record, dict) or not _REQUIRED.issubset(record):
        return RecordFacts(UNREADABLE, 0, "", "", "not a dead-letter record")
    return RecordFacts(
        reason=_text(record.get("reason"), _MAX_VALUE),
        attempts=_int(record.get("attempts")),
        event_id=_text(record.get("event_id"), _MAX_VALUE),
        error_type=_text(record.get("error_type"), _MAX_VALUE),
        error_message=_text(record.get("error_message"), _MAX_MESSAGE),
    )


def _text(value: object, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, min(value, 2**32 - 1))


class _Names:
    """Interned names (subjects, reasons, error types) and their ids; bounded when asked."""

    def __init__(self, *, limit: int | None = None) -> None:
        self.names: list[str] = []
        self._ids: dict[str, int] = {}
        self._limit = limit

    def id(self, name: str) -> int:
        found = self._ids.get(name)
        if found is not None:
            return found
        if self._limit is not None and len(self.names) >= self._limit - 1:
            name = _OTHER
            if name in self._ids:
                return self._ids[name]
        self._ids[name] = len(self.names)
        self.names.append(name)
        return self._ids[name]

    def find(self, name: str) -> int | None:
        return self._ids.get(name)
