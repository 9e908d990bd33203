"""Dead-letter records are untrusted: forged ones are refused, never obeyed (issue 19.1, 19.10).

Anyone allowed to publish on ``dlq.<env>.<app>.>`` can store anything in a DLQ. These tests
put forged records there and run the operator's tools on them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from faststream.security import SASLPlaintext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js.api import StreamConfig
from support import at, natspubsub, new_broker, running, wait_until
from typer.testing import CliRunner

from faststream_natspubsub import (
    DeadLetterQueue,
    DeadLetterRecord,
    DeadLetterRecordError,
    EventMetadata,
    NatsPubsub,
    PermanentError,
    ReplayRefusedError,
)
from faststream_natspubsub.cli import app as cli_app
from faststream_natspubsub.cli.output import safe
from faststream_natspubsub.replay import replay_headers, replay_target
from faststream_natspubsub.testing import EmbeddedNatsServer

ENVELOPE = b'{"event_id":"evt-1","topic":"order.created","message":{"id":1}}'


def record(original_subject: str, body: bytes = ENVELOPE, **fields: Any) -> dict[str, Any]:
    """A record as the package writes it (version 2), with ``fields`` changed."""
    data: dict[str, Any] = {
        "event_id": "evt-1",
        "reason": "permanent_error",
        "original_subject": original_subject,
        "original_stream": "TEST_ORDERS",
        "original_seq": 1,
        "consumer": "orders__x",
        "headers": {},
        "envelope": None,
        "raw_base64": base64.b64encode(body).decode(),
        "error_type": "PermanentError",
        "error_message": "no",
        "traceback": None,
        "attempts": 1,
        "first_failure_at": None,
        "last_failure_at": "2025-01-17T10:30:00.000Z",
        "dead_lettered_at": "2025-01-17T10:30:00.000Z",
        "app": "orders",
        "host": "h",
        "raw_size": len(body),
        "raw_sha256": hashlib.sha256(body).hexdigest(),
        "raw_truncated": False,
        "record_version": 2,
    }
    data.update(fields)
    return data


def stored(data: dict[str, Any], dlq_subject: str, seq: int = 1) -> DeadLetterRecord:
    return DeadLetterRecord.from_json(
        json.dumps(data).encode(), dlq_seq=seq, dlq_subject=dlq_subject
    )


# -- the rules, without a server ------------------------------------------------------------


@pytest.mark.parametrize(
    ("dlq_subject", "original", "why"),
    [
        # The body names the JetStream API: the record contradicts its own subject.
        (
            "dlq.test.orders.orders.order.created",
            "$JS.API.STREAM.DELETE.TEST_PAYMENTS",
            "contradicts itself",
        ),
        # The DLQ subject itself carries the API tokens.
        (
            "dlq.test.orders.$JS.API.STREAM.DELETE.TEST_PAYMENTS",
            "test.$JS.API.STREAM.DELETE.TEST_PAYMENTS",
            "not a topic part",
        ),
        ("dlq.test.orders.payments", "test.payments", "names no topic"),
        ("dlq.prod.orders.orders.order.created", "prod.orders.order.created", "outside"),
        ("dlq.test.orders.orders.order.*", "test.orders.order.*", "not a topic part"),
    ],
)
def test_replay_refuses_a_record_whose_subject_is_not_an_event_subject_of_the_env(
    dlq_subject: str, original: str, why: str
) -> None:
    with pytest.raises(ReplayRefusedError, match=why):
        replay_target(stored(record(original), dlq_subject), env="test", prefix="dlq.test.orders")


def test_replay_derives_the_subject_from_the_dlq_subject() -> None:
    target = replay_target(
        stored(record("test.my_app.order.created"), "dlq.test.orders.my_app.order.created"),
        env="test",
        prefix="dlq.test.orders",
    )

    assert (target.subject, target.source_app, target.topic) == (
        "test.my_app.order.created",
        "my_app",
        "order.created",
    )


def test_a_record_built_by_hand_is_not_replayed() -> None:
    data = record("test.orders.order.created")
    built = DeadLetterRecord.from_json(json.dumps(data).encode(), dlq_seq=1)

    with pytest.raises(ReplayRefusedError, match="not read from the DLQ stream"):
        replay_target(built, env="test", prefix="dlq.test.orders")


def test_replay_sends_no_header_of_the_record_that_steers_jetstream() -> None:
    headers = {
        "Nats-Rollup": "all",
        "nats-expected-last-sequence": "1",
        "Nats-TTL": "1s",
        "Natspubsub-Replay-Count": "x",
        "bad header": "v",
        "x-evil": "a\r\nNats-Rollup: all",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "Content-Encoding": "gzip",
    }
    forged = stored(
        record("test.orders.order.created", headers=headers), "dlq.test.orders.orders.order.created"
    )

    sent = replay_headers(
        forged, dlq_stream="DLQ_TEST_ORDERS", stream="TEST_ORDERS", exact_bytes=True
    )

    assert {k for k in sent if k.lower().startswith("nats-")} == {
        "Nats-Msg-Id",
        "Nats-Expected-Stream",
        "Nats-Published-At",
    }
    assert sent["Nats-Expected-Stream"] == "TEST_ORDERS"
    assert sent["Natspubsub-Replay-Count"] == "1"
    assert sent["traceparent"] == headers["traceparent"]
    assert sent["Content-Encoding"] == "gzip"  # the bytes are sent as received
    assert "bad header" not in sent
    assert "x-evil" not in sent


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
RECORD_FIELDS = st.fixed_dictionaries(
    {},
    optional=dict.fromkeys(record("test.orders.order.created"), JSON_VALUES),
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        JSON_VALUES.map(json.dumps).map(str.encode),
        RECORD_FIELDS.map(json.dumps).map(str.encode),
    )
)
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
def test_reading_any_bytes_as_a_record_gives_a_record_or_a_typed_error(payload: bytes) -> None:
    try:
        read = DeadLetterRecord.from_json(payload, dlq_seq=1, dlq_subject="dlq.test.orders.x.y")
    except DeadLetterRecordError:
        return
    # What a tool does with a record it could read must not fail either.
    _ = (read.topic, read.dead_lettered_time, read.raw_head)
    with contextlib.suppress(DeadLetterRecordError):
        _ = read.original_bytes


def test_printed_text_never_carries_control_characters() -> None:
    assert safe("a\x1b[2J\x1b]0;pwned\x07b\r\n\u202e\x85\ud800") == (
        "a\\x1b[2J\\x1b]0;pwned\\x07b\\x0d\\x0a\\u202e\\x85\\ud800"
    )
    assert safe("line 1\nline 2\x1b", keep_newlines=True) == "line 1\nline 2\\x1b"


# -- against a real server ------------------------------------------------------------------


async def _streams(js: Any, *, rollup: bool = False) -> None:
    await js.add_stream(StreamConfig(name="DLQ_TEST_ORDERS", subjects=["dlq.test.orders.>"]))
    await js.add_stream(
        StreamConfig(name="TEST_ORDERS", subjects=["test.orders.>"], allow_rollup_hdrs=rollup)
    )
    await js.add_stream(StreamConfig(name="TEST_PAYMENTS", subjects=["test.payments.>"]))


@pytest.mark.nats
async def test_replay_all_refuses_forged_records_and_replays_the_genuine_ones(
    server: EmbeddedNatsServer,
) -> None:
    # Given a DLQ holding forged records next to genuine ones, and an operator who allows
    # rollups on the orders stream, which holds two events
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    try:
        await _streams(js, rollup=True)
        for n in range(2):
            await js.publish("test.orders.order.created", b'{"event_id":"e%d","message":{}}' % n)
        forged = [
            # An empty body is what the API wants: this one deleted a stream before.
            (
                "dlq.test.orders.orders.order.created",
                record("$JS.API.STREAM.DELETE.TEST_PAYMENTS", body=b""),
            ),
            (
                "dlq.test.orders.$JS.API.STREAM.DELETE.TEST_PAYMENTS",
                record("test.$JS.API.STREAM.DELETE.TEST_PAYMENTS"),
            ),
            ("dlq.test.orders.payments", record("test.payments")),
        ]
        genuine = [
            ("dlq.test.orders.orders.order.created", record("test.orders.order.created")),
            (
                "dlq.test.orders.orders.order.created",
                record(
                    "test.orders.order.created",
                    event_id="evt-2",
                    headers={"Nats-Rollup": "all", "x-tenant": "t1"},
                ),
            ),
        ]
        for subject, data in forged + genuine:
            await js.publish(subject, json.dumps(data).encode())

        # When the operator replays everything
        result = await natspubsub(*at(server, "dlq", "replay"), "--all", "--json")

        # Then nothing reached the JetStream API, the rollup header was not obeyed, and each
        # record's outcome is reported without a traceback
        await js.stream_info("TEST_PAYMENTS")  # still there
        orders = await js.stream_info("TEST_ORDERS")
        left = [r.dlq_seq for r in await DeadLetterQueue(js, env="test", app="orders").list()]
        replayed = await js.get_msg("TEST_ORDERS", orders.state.last_seq)
    finally:
        await nc.close()
    assert result.code == 1, result
    assert "Traceback" not in result.out + result.err
    outcomes = [(item["dlq_seq"], item["outcome"]) for item in result.json()]
    assert outcomes == [
        (1, "refused"),
        (2, "refused"),
        (3, "refused"),
        (4, "replayed"),
        (5, "replayed"),
    ]
    errors = result.err.strip().splitlines()
    assert len(errors) == 3
    assert all(
        line.startswith("natspubsub: error: replay of event evt-1 refused") for line in errors
    )
    assert orders.state.messages == 4
    assert left == [1, 2, 3]
    assert replayed.data == ENVELOPE  # the bytes as received
    assert replayed.headers is not None
    assert "Nats-Rollup" not in replayed.headers
    assert replayed.headers["x-tenant"] == "t1"
    assert replayed.headers["Natspubsub-Replay-Count"] == "1"


@pytest.mark.nats
async def test_a_truncated_record_is_replayed_from_its_stream_or_refused(
    server: EmbeddedNatsServer,
) -> None:
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    try:
        await _streams(js)
        ack = await js.publish("test.orders.order.created", ENVELOPE)
        head = {"raw_base64": base64.b64encode(ENVELOPE[:10]).decode(), "raw_truncated": True}
        good = record("test.orders.order.created", original_seq=ack.seq, **head)
        wrong_seq = record("test.orders.order.created", original_seq=ack.seq + 7, **head)
        for data in (good, wrong_seq):
            await js.publish("dlq.test.orders.orders.order.created", json.dumps(data).encode())
        dlq = DeadLetterQueue(js, env="test", app="orders")
        first, second = await dlq.list()

        result = await dlq.replay(first)
        with pytest.raises(ReplayRefusedError, match="first bytes"):
            await dlq.replay(second)
        copy = await js.get_msg("TEST_ORDERS", result.seq or 0)
    finally:
        await nc.close()
    assert copy.data == ENVELOPE
    assert result.record_deleted


@pytest.mark.nats
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_dlq_show_escapes_terminal_sequences_from_a_record(
    server: EmbeddedNatsServer,
) -> None:
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    try:
        await _streams(js)
        hostile = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"
        data = record(
            "test.orders.order.created",
            headers={"x-note": hostile},
            error_message=f"boom{hostile}\rFAKE LINE",
            traceback=f"Traceback (most recent call last):\n  {hostile}\n",
        )
        await js.publish("dlq.test.orders.orders.order.created", json.dumps(data).encode())
        shown = await natspubsub(*at(server, "dlq", "show"), "--seq", "1")
        listed = await natspubsub(*at(server, "dlq", "ls"))
        as_json = await natspubsub(*at(server, "dlq", "ls"), "--json")
    finally:
        await nc.close()
    for result in (shown, listed, as_json):
        assert result.code == 0, result
        assert "\x1b" not in result.out + result.err
        assert "\r" not in result.out + result.err
    assert "x-note: \\x1b]0;pwned\\x07\\x1b[2J\\x1b[31m" in shown.out
    assert as_json.json()[0]["headers"]["x-note"] == hostile  # JSON keeps the value, escaped


@pytest.mark.nats
@pytest.mark.slow
async def test_replay_without_the_delete_right_says_the_event_was_republished_and_kept() -> None:
    # Given an operator allowed everything but deleting DLQ messages
    config = """
    authorization {
      users = [
        {user: app, password: app}
        {user: ops, password: ops, permissions: {publish: {deny: ["$JS.API.STREAM.MSG.DELETE.>"]}}}
      ]
    }
    """
    async with EmbeddedNatsServer(config=config) as server:
        broker = new_broker(server, security=SASLPlaintext("app", "app"))
        pubsub = NatsPubsub(broker, env="test", app="orders")
        fixed = False
        handled: list[EventMetadata] = []

        @pubsub.subscriber("order.created")
        async def created(body: dict[str, Any], meta: EventMetadata) -> None:
            if not fixed:
                raise PermanentError("bug")
            handled.append(meta)

        async with running(pubsub.broker):
            js = pubsub.broker.connection.jetstream()
            dlq = DeadLetterQueue(js, env="test", app="orders")
            published = await pubsub.publish("order.created", {"id": 1})
            await wait_until(lambda: _has_records(dlq, 1), message="the DLQ record")
            fixed = True

            # When the operator replays it
            result = await natspubsub(
                *at(server, "dlq", "replay", published.event_id),
                "--user",
                "ops",
                "--password",
                "ops",
                "--timeout",
                "1",
            )
            await wait_until(lambda: len(handled) == 1, message="the replayed event")
            left = await dlq.list()

    # Then it says exactly that: republished, record kept for lack of the right
    assert result.code == 1, result
    assert f"replayed event {published.event_id} to test.orders.order.created" in result.out
    [warning] = result.err.strip().splitlines()
    assert warning.startswith("natspubsub: warning:")
    assert "record kept: no permission to delete it" in warning
    assert "$JS.API.STREAM.MSG.DELETE.DLQ_TEST_ORDERS" in warning
    assert "failed" not in result.out + result.err
    assert [r.event_id for r in left] == [published.event_id]
    assert handled[0].replay_count == 1


async def _has_records(dlq: DeadLetterQueue, count: int) -> bool:
    return len(await dlq.list()) == count


# -- fuzzing the command line's record reading --------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[tuple[EmbeddedNatsServer, asyncio.AbstractEventLoop]]:
    """One server for every example; a loop of its own (the examples are synchronous)."""
    loop = asyncio.new_event_loop()
    server = EmbeddedNatsServer()
    loop.run_until_complete(server.start())
    loop.run_until_complete(_fuzz_topology(server.url))
    try:
        yield server, loop
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


async def _fuzz_topology(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await _streams(nc.jetstream())
    finally:
        await nc.close()


async def _store(url: str, subject: str, payload: bytes, headers: dict[str, str]) -> int:
    nc = await nats.connect(url)
    try:
        ack = await nc.jetstream().publish(subject, payload, headers=headers or None)
    finally:
        await nc.close()
    return ack.seq


TOKENS = st.sampled_from(
    ["orders", "order", "created", "$JS", "API", "_INBOX", "x-1", "A_b", "*", ">"]
)
DLQ_SUBJECTS = st.lists(TOKENS, min_size=1, max_size=4).map(
    lambda t: ".".join(["dlq.test.orders", *t])
)
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    RECORD_FIELDS.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda subject, extra: json.dumps({**record(subject), **extra}).encode(),
        st.sampled_from(["test.orders.order.created", "$JS.API.STREAM.DELETE.TEST_ORDERS", "x"]),
        st.dictionaries(st.sampled_from(sorted(record("x"))), JSON_VALUES, max_size=3),
    ),
)
HEADERS = st.dictionaries(
    st.sampled_from(["x-a", "Content-Encoding", "traceparent"]),
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"),
        max_size=20,
    )
    .map(str.strip)
    .filter(bool),
    max_size=2,
)


@pytest.mark.nats
@pytest.mark.slow
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    subject=DLQ_SUBJECTS.filter(lambda s: "*" not in s and ">" not in s),
    payload=PAYLOADS,
    headers=HEADERS,
)
def test_any_bytes_in_the_dlq_give_one_line_messages_never_a_traceback(
    fuzz_server: tuple[EmbeddedNatsServer, asyncio.AbstractEventLoop],
    subject: str,
    payload: bytes,
    headers: dict[str, str],
) -> None:
    server, loop = fuzz_server
    seq = loop.run_until_complete(_store(server.url, subject, payload, headers))
    runner = CliRunner()
    target = ["--servers", server.url, "--env", "test", "--app", "orders"]
    for command in (
        ["dlq", "ls"],
        ["dlq", "ls", "--json"],
        ["dlq", "show", "--seq", str(seq)],
        ["dlq", "replay", "--seq", str(seq), "--keep", "--timeout", "1"],
        ["dlq", "replay", "--all", "--dry-run"],
    ):
        result = runner.invoke(cli_app, [*command, *target])
        output = result.stdout + result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), output
        assert result.exit_code in (0, 1), (command, output)
        assert "Traceback" not in output
        assert "\x1b" not in output
        for line in result.stderr.splitlines():
            assert line.startswith(("natspubsub: error: ", "natspubsub: warning: ")), line


@pytest.mark.nats
async def test_a_record_written_by_the_first_releases_is_still_read_and_replayed(
    server: EmbeddedNatsServer,
) -> None:
    # Given a version 1 record: the decoded envelope, no bytes, a replay count in metadata
    envelope = {"event_id": "old-1", "message": {"id": 1}, "metadata": {"replay_count": 2}}
    legacy = {
        key: value
        for key, value in record("test.orders.order.created", envelope=envelope).items()
        if key not in ("raw_size", "raw_sha256", "raw_truncated", "record_version")
    }
    legacy.update(event_id="old-1", raw_base64=None)
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    try:
        await _streams(js)
        await js.publish("dlq.test.orders.orders.order.created", json.dumps(legacy).encode())
        dlq = DeadLetterQueue(js, env="test", app="orders")
        [read] = await dlq.list()
        result = await dlq.replay(read)
        copy = await js.get_msg("TEST_ORDERS", result.seq or 0)
    finally:
        await nc.close()
    assert read.record_version == 1
    assert json.loads(read.original_bytes) == envelope
    assert json.loads(copy.data or b"") == envelope
    assert copy.headers is not None
    assert copy.headers["Natspubsub-Replay-Count"] == "3"
    assert result.record_deleted
