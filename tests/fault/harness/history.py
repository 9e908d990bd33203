"""What was published and what happened to it, checked the way Jepsen's set checker does.

Each publish is recorded before it is attempted. It then ends *acknowledged* (a PubAck came
back) or *indeterminate* (an error: the event may or may not be stored, so it may or may not
be handled). Against the effects the consumers recorded and the DLQ:

- **lost**: acknowledged, but neither handled (normal events) nor dead-lettered (poison);
- **unexpected**: handled or dead-lettered, but never published;
- **duplicated**: an effect performed more than once for one event id;
- **recovered**: indeterminate, and handled after all (allowed: the error was about the ack).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from faststream_natspubsub import (
    DeadLetterQueue,
    DeadLetterRecord,
    NatsPubsub,
    OutgoingEvent,
    PublishResult,
)

ENV, APP, TOPIC = "fault", "ledger", "entry.posted"
SUBJECT = f"{ENV}.{APP}.{TOPIC}"
STREAM = f"{ENV}_{APP}".upper()
POISON = "poison"


@dataclass
class History:
    """Every publish attempt with its kind and outcome."""

    kinds: dict[str, str] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    failed: dict[str, BaseException] = field(default_factory=dict)

    async def publish(
        self, pubsub: NatsPubsub, kind: str = "normal", *, timeout: float = 2.0, **body: Any
    ) -> str:
        """Publish one event of ``kind`` and record the outcome; never raises."""
        event_id = uuid.uuid4().hex
        self.kinds[event_id] = kind
        try:
            await pubsub.publish(TOPIC, {"kind": kind, **body}, event_id=event_id, timeout=timeout)
        except Exception as exc:
            self.failed[event_id] = exc
        else:
            self.acknowledged.add(event_id)
        return event_id

    async def publish_many(
        self, pubsub: NatsPubsub, count: int, *, timeout: float = 2.0
    ) -> list[PublishResult]:
        """Publish ``count`` normal events in one ``publish_many``; record each outcome."""
        event_ids = [uuid.uuid4().hex for _ in range(count)]
        for event_id in event_ids:
            self.kinds[event_id] = "normal"
        items = [
            (TOPIC, OutgoingEvent(message={"kind": "normal"}, event_id=event_id))
            for event_id in event_ids
        ]
        results = await pubsub.publish_many(items, timeout=timeout)
        for result in results:
            if result.error is None:
                self.acknowledged.add(result.event_id)
            else:
                self.failed[result.event_id] = result.error
        return results

    def acknowledged_of(self, *, poison: bool) -> set[str]:
        """Acknowledged events that should end in the DLQ (poison) or in an effect."""
        return {e for e in self.acknowledged if (self.kinds[e] == POISON) is poison}


async def dead_letters(pubsub: NatsPubsub) -> list[DeadLetterRecord]:
    """Every DLQ record of the app, oldest first."""
    dlq = DeadLetterQueue(pubsub.broker.connection.jetstream(), env=ENV, app=APP)
    return [record async for record in dlq.records()]


@dataclass
class Verdict:
    """The checker's result for one run."""

    history: History
    effects: list[str]
    records: list[DeadLetterRecord]
    faults: Counter[str] = field(default_factory=Counter)
    # Duplicated events explained by a consumer SIGKILLed between the handler's effect and
    # the inbox's processed mark (see ``consumers.effect_mark_window``): a documented limit.
    in_effect_mark_window: set[str] = field(default_factory=set)

    @property
    def dlq(self) -> list[str]:
        """Event id of each DLQ record (``?`` for malformed bytes without one)."""
        return [record.event_id or "?" for record in self.records]

    @property
    def lost(self) -> list[str]:
        handled = set(self.effects)
        in_dlq = set(self.dlq)
        missing = (self.history.acknowledged_of(poison=False) - handled) | (
            self.history.acknowledged_of(poison=True) - in_dlq
        )
        return sorted(missing)

    @property
    def unexpected(self) -> list[str]:
        return sorted((set(self.effects) | set(self.dlq)) - set(self.history.kinds))

    @property
    def duplicated(self) -> dict[str, int]:
        return {e: n for e, n in Counter(self.effects).items() if n > 1}

    @property
    def duplicated_unexplained(self) -> dict[str, int]:
        """Duplicates other than two effects from the effect/mark window."""
        return {
            e: n
            for e, n in self.duplicated.items()
            if not (n == 2 and e in self.in_effect_mark_window)
        }

    @property
    def recovered(self) -> list[str]:
        return sorted(set(self.history.failed) & (set(self.effects) | set(self.dlq)))

    @property
    def dlq_duplicated(self) -> dict[str, int]:
        """Stored messages dead-lettered more than once (``stream:seq`` -> records)."""
        where = Counter(f"{r.original_stream}:{r.original_seq}" for r in self.records)
        return {key: n for key, n in where.items() if n > 1}

    @property
    def poison_not_once(self) -> list[str]:
        """Acknowledged poison events without exactly one DLQ record."""
        counts = Counter(self.dlq)
        return sorted(e for e in self.history.acknowledged_of(poison=True) if counts[e] != 1)

    @property
    def dlq_same_event_twice(self) -> list[str]:
        """Event ids with several DLQ records (different messages: e.g. an event and its copy),
        each shown as ``id kind [reason@seq, ...]``."""
        by_event: dict[str, list[DeadLetterRecord]] = {}
        for record in self.records:
            by_event.setdefault(record.event_id or "?", []).append(record)
        return [
            f"{event_id} {self.history.kinds.get(event_id, '?')} "
            f"{[f'{r.reason}@{r.original_seq}' for r in records]}"
            for event_id, records in sorted(by_event.items())
            if len(records) > 1
        ]

    @property
    def wrongly_dead_lettered(self) -> list[str]:
        """Dead-lettered events that were not poison (with or without their effect)."""
        return sorted(e for e in set(self.dlq) if self.history.kinds.get(e, POISON) != POISON)

    @property
    def poison_handled(self) -> list[str]:
        """Poison events that produced an effect (they never should)."""
        return sorted(e for e in set(self.effects) if self.history.kinds.get(e) == POISON)

    def check_at_least_once(self, title: str = "natspubsub fault check") -> None:
        """Like :meth:`check`, for consumers without an inbox: duplicates are allowed."""
        if self.lost or self.unexpected or self.records:
            pytest.fail(self.render(title), pytrace=False)

    def check(self, title: str = "natspubsub fault check") -> None:
        """Pass if valid; fail with the report otherwise."""
        if not self.valid:
            pytest.fail(self.render(title), pytrace=False)

    @property
    def valid(self) -> bool:
        return not (
            self.lost
            or self.unexpected
            or self.duplicated_unexplained
            or self.dlq_duplicated
            or self.wrongly_dead_lettered
            or self.poison_handled
            or self.poison_not_once
        )

    def render(self, title: str = "natspubsub fault check") -> str:
        """A report in the terms of Jepsen's set checker."""
        h = self.history
        poison_acked = h.acknowledged_of(poison=True)
        unexplained = self.duplicated_unexplained
        rows: list[tuple[str, Any]] = [
            ("valid?", self.valid),
            ("attempt-count", len(h.kinds)),
            ("acknowledged-count", len(h.acknowledged)),
            ("indeterminate-count", len(h.failed)),
            ("indeterminate-errors", _error_kinds(h.failed.values())),
            ("recovered-count", len(self.recovered)),
            ("effect-count", len(self.effects)),
            ("lost-count", len(self.lost)),
            ("lost", _sample(self.lost)),
            ("unexpected-count", len(self.unexpected)),
            ("unexpected", _sample(self.unexpected)),
            ("duplicated-count", len(self.duplicated)),
            ("duplicated", _sample(sorted(self.duplicated))),
            ("duplicated-in-window-count", len(self.duplicated) - len(unexplained)),
            ("duplicated-unexplained-count", len(unexplained)),
            ("poison-acknowledged", len(poison_acked)),
            ("dlq-count", len(self.dlq)),
            ("dlq-reasons", dict(Counter(r.reason for r in self.records))),
            ("dlq-poison-exactly-once", len(poison_acked) - len(self.poison_not_once)),
            ("dlq-duplicated-count", len(self.dlq_duplicated)),
            ("dlq-duplicated", _sample(sorted(self.dlq_duplicated))),
            ("dlq-same-event-twice", _sample(self.dlq_same_event_twice)),
            ("dlq-not-poison-count", len(self.wrongly_dead_lettered)),
            ("poison-handled-count", len(self.poison_handled)),
            ("faults", dict(sorted(self.faults.items()))),
        ]
        width = max(len(key) for key, _ in rows) + 2
        lines = [f";; {title}"]
        for index, (key, value) in enumerate(rows):
            opener = "{" if index == 0 else " "
            closer = "}" if index == len(rows) - 1 else ""
            rendered = str(value).lower() if isinstance(value, bool) else value
            lines.append(f"{opener}:{key:<{width}}{rendered}{closer}")
        return "\n".join(lines)


def _error_kinds(errors: Iterable[BaseException]) -> dict[str, int]:
    return dict(Counter(type(e).__name__ for e in errors))


def _sample(items: list[str], limit: int = 10) -> list[str]:
    return items[:limit] + ([f"... {len(items) - limit} more"] if len(items) > limit else [])
