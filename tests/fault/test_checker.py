"""The fault checker itself: which duplicates it counts apart as the effect/mark window."""

from __future__ import annotations

from pathlib import Path

from harness.consumers import ConsumerProcess, effect_mark_window

DURABLE = "ledger__fault_ledger_entry_posted_0"


def _consumer(work: Path, name: str, *, started: str, effects: str, marks: str) -> ConsumerProcess:
    consumer = ConsumerProcess(["nats://127.0.0.1:1"], work, name)
    consumer.started_path.write_text(started)
    consumer.effects_path.write_text(effects)
    consumer.marks_path.write_text(marks)
    return consumer


def test_only_a_kill_between_effect_and_mark_explains_a_duplicate(tmp_path: Path) -> None:
    # e1: c0 wrote the effect, was killed before its mark, c1 ran it again after the kill
    # e2: c0 wrote the effect AND the mark, then c1 ran it again: a real duplicate
    # e3: c0 wrote the effect, no mark, but was never killed: not the window either
    c0 = _consumer(
        tmp_path,
        "c0",
        started="e1 1 100.0\ne2 1 100.0\ne3 1 100.0\n",
        effects="e1\ne2\ne3\n",
        marks=f"{DURABLE}.e2 100.1\n",
    )
    c0.kills.append(100.2)
    c1 = _consumer(
        tmp_path,
        "c1",
        started="e1 3 131.0\ne2 3 131.0\ne3 3 90.0\n",
        effects="e1\ne2\ne3\n",
        marks=f"{DURABLE}.e1 131.1\n{DURABLE}.e2 131.1\n",
    )
    c1.kills.append(50.0)  # before e3's first delivery: no bearing on it

    assert effect_mark_window([c0, c1], {"e1", "e2", "e3"}) == {"e1"}
