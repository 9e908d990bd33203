"""Fuzzing the consume path (in memory) and the subject builder with hypothesis.

Raw bytes reach the subscriber as FastStream's ``PatchedMessage``, through
``subscriber.process_message``: the path a delivery takes, without the publish middleware
that would wrap them in a fresh envelope. Whatever is not an envelope must end in the DLQ as
``malformed`` without the handler seeing it; no exception may escape; the valid envelopes
generated on purpose must reach the handler, once.

Which inputs carry an envelope is decided by an oracle independent of the package: the
standard library's ``json`` and ``gzip``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from faststream.nats import NatsBroker
from faststream.nats.testing import PatchedMessage
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from faststream_natspubsub import (
    DeadLetterRecord,
    EnvelopeCodec,
    EventMetadata,
    NatsPubsub,
    SubjectError,
    build_subject,
    parse_subject,
)
from faststream_natspubsub.testing import TestNatsPubsub

SUBJECT = "fuzz.orders.order.created"
# Small enough that a bomb costs little to refuse; the bound is what is tested, not its size.
MAX_INFLATED = 1024 * 1024
# Thousands of examples each: minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.fault, pytest.mark.nats, pytest.mark.timeout(900)]

FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class MemoryConsumer:
    """One NatsPubsub subscriber under ``TestNatsPubsub``, on its own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        pubsub = NatsPubsub(
            NatsBroker(logger=None),
            env="fuzz",
            app="orders",
            codec=EnvelopeCodec(max_decompressed_size=MAX_INFLATED),
        )
        self.handled: list[str] = []
        self.subscriber = pubsub.subscriber("order.created")

        @self.subscriber
        async def handle(body: dict[str, Any], meta: EventMetadata) -> None:
            self.handled.append(meta.event_id)

        self.tp = TestNatsPubsub(pubsub)
        self.loop.run_until_complete(self.tp.__aenter__())

    def deliver(
        self, data: bytes, headers: dict[str, str] | None = None
    ) -> tuple[list[str], list[DeadLetterRecord]]:
        """Deliver raw bytes once; returns what the handler saw and what was dead-lettered."""
        handled, dead = len(self.handled), len(self.tp.dead_letters)
        message = PatchedMessage(
            _client=None,  # type: ignore[arg-type]
            subject=SUBJECT,
            reply="",
            data=data,
            headers=dict(headers or {}),
        )
        self.loop.run_until_complete(self.subscriber.process_message(message))
        return self.handled[handled:], self.tp.dead_letters[dead:]

    def close(self) -> None:
        self.loop.run_until_complete(self.tp.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(scope="module")
def consumer() -> Iterator[MemoryConsumer]:
    """The in-memory consumer, shared by every example (its logs are silenced)."""
    package_logger = logging.getLogger("faststream_natspubsub")
    level = package_logger.level
    package_logger.setLevel(logging.CRITICAL + 1)  # thousands of DLQ tracebacks otherwise
    rig = MemoryConsumer()
    try:
        yield rig
    finally:
        rig.close()
        package_logger.setLevel(level)


# -- the oracle and the checks ------------------------------------------------------------


def carries_event_id(data: bytes) -> bool:
    """Whether ``data`` is (gzipped) UTF-8 JSON of an object with a non-empty ``event_id``."""
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        value = json.loads(data.decode("utf-8"))
    except (ValueError, EOFError, OSError, RecursionError):
        return False
    return (
        isinstance(value, dict)
        and isinstance(value.get("event_id"), str)
        and bool(value["event_id"])
    )


def assert_malformed(consumer: MemoryConsumer, data: bytes, **headers: str) -> None:
    handled, dead = consumer.deliver(data, headers)
    assert handled == []
    assert [record.reason for record in dead] == ["malformed"]
    record = dead[0]
    assert (record.raw_size, record.raw_sha256) == (len(data), hashlib.sha256(data).hexdigest())
    if record.raw_truncated:  # too large for one message: the head, its size and hash
        assert data.startswith(record.raw_head)
    else:
        assert record.original_bytes == data


def assert_handled_once(consumer: MemoryConsumer, data: bytes, event_id: str, **h: str) -> None:
    handled, dead = consumer.deliver(data, h)
    assert dead == []
    assert handled == [event_id]


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
event_ids = st.text(min_size=1, max_size=60)


def envelope(event_id: str = "e-1", **fields: Any) -> dict[str, Any]:
    """A valid envelope, with ``fields`` overriding or adding top-level members."""
    data: dict[str, Any] = {
        "event_id": event_id,
        "schema_version": 1,
        "topic": "order.created",
        "occurred_at": "2025-01-17T10:30:00.000Z",
        "message": {"order_id": "ORD-1"},
    }
    data.update(fields)
    return data


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- not envelopes: malformed ---------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_dead_lettered_as_malformed(consumer: MemoryConsumer, data: bytes) -> None:
    assume(not carries_event_id(data))
    assert_malformed(consumer, data)


@FUZZ
@given(value=json_values, ascii_only=st.booleans())
def test_random_json_without_an_event_id_is_dead_lettered_as_malformed(
    consumer: MemoryConsumer, value: Any, ascii_only: bool
) -> None:
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    assume(not carries_event_id(data))
    assert_malformed(consumer, data)


_defects = st.one_of(
    st.builds(lambda v: ("event_id", v), st.none() | st.integers() | st.just("") | json_objects),
    st.builds(lambda v: ("metadata", v), st.integers() | st.text() | st.lists(json_scalars)),
    st.builds(
        lambda v: ("occurred_at", v),
        st.integers() | st.booleans() | st.lists(json_scalars) | json_objects,
    ),
    st.builds(lambda v: ("occurred_at", v), st.text(max_size=40)),
    st.just(("message", None)),  # None here: drop the member (no message, no payload)
)


def _iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        return False
    return True


@FUZZ
@given(defect=_defects, extra=json_objects)
def test_an_envelope_with_one_broken_member_is_dead_lettered_as_malformed(
    consumer: MemoryConsumer, defect: tuple[str, Any], extra: dict[str, Any]
) -> None:
    key, value = defect
    assume(not (key == "occurred_at" and isinstance(value, str) and _iso(value)))
    data = {**{k: v for k, v in extra.items() if k not in envelope()}, **envelope()}
    data.pop("payload", None)
    if key == "message":
        del data["message"]
    else:
        data[key] = value
    assert_malformed(consumer, dumps(data))


@FUZZ
@given(depth=st.integers(1_000, 200_000), opener=st.sampled_from(["[", "{"]))
def test_deeply_nested_json_is_dead_lettered_as_malformed(
    consumer: MemoryConsumer, depth: int, opener: str
) -> None:
    nested = "[" * depth + "]" * depth if opener == "[" else '{"a":' * depth + "1" + "}" * depth
    assert_malformed(consumer, nested.encode())
    # Inside an otherwise valid envelope, a nesting this deep is refused as well
    wrapped = '{"event_id":"deep","message":{"n":' + nested + "}}"
    assert_malformed(consumer, wrapped.encode())


@FUZZ
@given(
    size=st.integers(64 * 1024, 2 * 1024 * 1024),
    form=st.sampled_from(["raw", "json-string", "unterminated-envelope", "json-array"]),
)
def test_huge_strings_that_are_not_envelopes_are_dead_lettered_as_malformed(
    consumer: MemoryConsumer, size: int, form: str
) -> None:
    blob = "x" * size
    data = {
        "raw": blob.encode(),
        "json-string": dumps(blob),
        "unterminated-envelope": b'{"event_id":"big","message":{"s":"' + blob.encode(),
        "json-array": dumps([blob]),
    }[form]
    assert_malformed(consumer, data)


_INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88"]


@FUZZ
@given(
    event_id=event_ids,
    bad=st.sampled_from(_INVALID_UTF8),
    where=st.floats(0, 1),
)
def test_an_envelope_with_invalid_utf8_is_dead_lettered_as_malformed(
    consumer: MemoryConsumer, event_id: str, bad: bytes, where: float
) -> None:
    valid = dumps(envelope(event_id))  # ASCII (json escapes the rest): any insertion breaks it
    at = int(where * len(valid))
    assert_malformed(consumer, valid[:at] + bad + valid[at:])


def _bomb(inflated: int) -> bytes:
    return gzip.compress(b'{"event_id":"bomb","message":{},"pad":"' + b" " * inflated + b'"}')


BOMBS = [_bomb(MAX_INFLATED + 1), _bomb(8 * MAX_INFLATED), _bomb(64 * MAX_INFLATED)]


@FUZZ
@given(
    bomb=st.sampled_from(BOMBS),
    cut=st.integers(0, 200),
    tail=st.binary(max_size=64),
    form=st.sampled_from(["bomb", "truncated", "bomb+tail"]),
)
def test_a_gzip_bomb_is_dead_lettered_as_malformed_without_inflating_it(
    consumer: MemoryConsumer, bomb: bytes, cut: int, tail: bytes, form: str
) -> None:
    data = {"bomb": bomb, "truncated": bomb[: len(bomb) - 1 - cut], "bomb+tail": bomb + tail}[form]
    assert_malformed(consumer, data)


@FUZZ
@given(inner=st.binary(max_size=2048) | json_values.map(dumps), twice=st.booleans())
def test_gzipped_bytes_that_are_not_an_envelope_are_dead_lettered_as_malformed(
    consumer: MemoryConsumer, inner: bytes, twice: bool
) -> None:
    data = gzip.compress(gzip.compress(inner) if twice else inner)
    assume(not carries_event_id(data))
    assert_malformed(consumer, data)


# -- valid envelopes, generated on purpose: handled ------------------------------------------

# Readers are tolerant: known metadata keys with values of any JSON type are still read.
_metadata = st.fixed_dictionaries(
    {},
    optional=dict.fromkeys(
        ("trace_id", "correlation_id", "causation_id", "user_id", "app_name"), json_values
    ),
)


@FUZZ
@given(
    event_id=event_ids,
    message=json_objects,
    metadata=_metadata,
    occurred_at=st.none() | st.datetimes(timezones=st.just(timezone.utc)),
    legacy=st.booleans(),
    compressed=st.booleans(),
)
def test_a_valid_envelope_reaches_the_handler_once(
    consumer: MemoryConsumer,
    event_id: str,
    message: dict[str, Any],
    metadata: dict[str, Any],
    occurred_at: datetime | None,
    legacy: bool,
    compressed: bool,
) -> None:
    data = envelope(event_id, metadata=metadata)
    if legacy:  # NatsPubsub 1.0's older form: the payload under "payload"
        del data["message"]
        data["payload"] = message
    else:
        data["message"] = message
    if occurred_at is None:
        del data["occurred_at"]
    else:
        data["occurred_at"] = occurred_at.isoformat(timespec="milliseconds")
    raw = dumps(data)
    assert_handled_once(consumer, gzip.compress(raw) if compressed else raw, event_id)


_crlf_text = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("\r\n"), max_size=40)
_header_names = st.sampled_from(
    ["Nats-Msg-Id", "traceparent", "Content-Encoding", "content-type", "correlation_id"]
) | st.from_regex(r"x-fuzz-[a-z0-9-]{1,12}", fullmatch=True)


@FUZZ
@given(
    headers=st.dictionaries(_header_names, _crlf_text, min_size=1, max_size=6),
    crlf=st.sampled_from(["\r\n", "\r", "\n", "\r\nx-injected: 1"]),
    valid=st.booleans(),
    event_id=event_ids,
)
def test_header_values_with_cr_or_lf_change_nothing_about_the_outcome(
    consumer: MemoryConsumer, headers: dict[str, str], crlf: str, valid: bool, event_id: str
) -> None:
    name = next(iter(headers))
    headers[name] += crlf
    if valid:
        assert_handled_once(consumer, dumps(envelope(event_id)), event_id, **headers)
    else:
        assert_malformed(consumer, b"not an envelope\r\n" + crlf.encode(), **headers)


# -- subjects -------------------------------------------------------------------------------

_near_subject_text = st.text(alphabet="abcXYZ019-_.*> \t\r\n\x00\u212a\u0130é", max_size=24)
_TOKEN = re.compile(r"[a-z0-9_-]+")
_NAME = re.compile(r"[a-z0-9-]+")


def assert_valid_subject(subject: str) -> None:
    """A subject NATS accepts and the scheme allows: env.app.topic, wildcards as whole tokens."""
    tokens = subject.split(".")
    assert len(tokens) >= 3
    assert _NAME.fullmatch(tokens[0]), tokens[0]
    assert _NAME.fullmatch(tokens[1]), tokens[1]
    for index, token in enumerate(tokens[2:], start=2):
        assert (
            token == "*" or (token == ">" and index == len(tokens) - 1) or _TOKEN.fullmatch(token)
        ), token
    assert not any(ch.isspace() or ord(ch) < 32 or ord(ch) > 126 for ch in subject)


@FUZZ
@given(
    env=_near_subject_text | st.text(max_size=24),
    app=_near_subject_text | st.text(max_size=24),
    topic=_near_subject_text | st.text(max_size=24),
)
def test_build_subject_gives_a_valid_nats_subject_or_raises_subject_error(
    env: str, app: str, topic: str
) -> None:
    try:
        subject = build_subject(env, app, topic)
    except SubjectError:
        return
    assert_valid_subject(subject)
    parts = parse_subject(subject)
    assert (parts.env, parts.app, parts.topic) == tuple(subject.split(".", 2))
    assert parts.topic == topic.strip().lower()
