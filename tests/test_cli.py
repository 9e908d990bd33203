"""The ``natspubsub`` command line, run as operators run it: a process per command.

A subprocess keeps the test's event loop free to run the apps under test while the
command works, and shows exactly what a shell would see on stdout, stderr and exit code.
"""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig
from support import (
    assert_one_line_error,
    at,
    consumer_idle,
    natspubsub,
    new_broker,
    running,
    wait_until,
)
from typer.testing import CliRunner

from faststream_natspubsub import DeadLetterQueue, EventMetadata, NatsPubsub, PermanentError
from faststream_natspubsub.cli import app
from faststream_natspubsub.cli.durations import parse_duration, parse_since
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

ORDERS_DURABLE = consumer_name("orders", "test.orders.order.created")
PAID_DURABLE = consumer_name("orders", "test.orders.order.paid")


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- durations (no server) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5h", timedelta(minutes=90)),
        (" 7D ", timedelta(days=7)),
        ("0s", timedelta()),
    ],
)
def test_durations_are_read_with_their_units(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "7x", "d", "-1h", "1h-", "one hour", "1h 2"])
def test_a_bad_duration_is_a_value_error_naming_the_input(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_since_accepts_a_duration_ago_and_iso_times_in_utc() -> None:
    now = datetime(2025, 1, 17, 12, 0, tzinfo=timezone.utc)

    assert parse_since("2h", now=now) == datetime(2025, 1, 17, 10, 0, tzinfo=timezone.utc)
    assert parse_since("2025-01-17T10:30:00Z") == datetime(2025, 1, 17, 10, 30, tzinfo=timezone.utc)
    assert parse_since("2025-01-17T11:30:00+01:00") == datetime(
        2025, 1, 17, 10, 30, tzinfo=timezone.utc
    )
    assert parse_since("2025-01-17T10:30:00.123") == datetime(
        2025, 1, 17, 10, 30, 0, 123000, tzinfo=timezone.utc
    )  # no offset: UTC
    assert parse_since("2025-01-17") == datetime(2025, 1, 17, tzinfo=timezone.utc)


@pytest.mark.parametrize("text", ["yesterday", "2025-13-01", "17/01/2025"])
def test_a_bad_since_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="invalid time"):
        parse_since(text)


# -- help and input checks (no server) ------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["topology", "show"],
        ["topology", "ensure"],
        ["dlq", "ls"],
        ["dlq", "show"],
        ["dlq", "replay"],
        ["dlq", "purge"],
        ["health"],
        ["demo"],
    ],
    ids=lambda c: " ".join(c) or "natspubsub",
)
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})

    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    if command and command != ["demo"]:
        assert "--servers" in result.output
        assert "--json" in result.output


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["dlq", "ls", "--env", "test"], 2, "missing --app"),
        (["topology", "show"], 2, "missing --env"),
        (["topology", "show", "--env", "Bad Env"], 2, "invalid env 'Bad Env'"),
        (["dlq", "ls", "-e", "t", "-a", "o", "--since", "yesterday"], 2, "--since: invalid time"),
        (["dlq", "purge", "-e", "t", "-a", "o", "--older-than", "7x", "--yes"], 2, "duration"),
        (["dlq", "purge", "-e", "t", "-a", "o"], 2, "add --yes"),
        (["dlq", "show", "-e", "t", "-a", "o"], 2, "give an EVENT_ID or --seq"),
        (["dlq", "replay", "-e", "t", "-a", "o", "x", "--all"], 2, "not several"),
        (["dlq", "ls", "-e", "t", "-a", "o", "--topic", "a..b"], 2, "invalid topic"),
        (["dlq", "ls", "-e", "t", "-a", "o", "--creds", "/no/such.creds"], 2, "--creds"),
        (["dlq", "ls", "-e", "t", "-a", "o", "--tls-cert", "/no/cert.pem"], 2, "--tls-key"),
        (["health", "-e", "t", "-a", "o", "--consumer", "nodurable"], 2, "STREAM/DURABLE"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_bad_input_prints_one_line_and_no_traceback(
    args: list[str], code: int, text: str
) -> None:
    result = await natspubsub(*args)

    assert_one_line_error(result, code, text)


async def test_an_unreachable_server_is_one_line_and_exit_code_2() -> None:
    url = f"nats://127.0.0.1:{unused_port()}"

    result = await natspubsub("dlq", "ls", "-s", url, "-e", "test", "-a", "orders")

    assert_one_line_error(result, 2, f"cannot connect to {url}: connection refused")


# -- against a real server ---------------------------------------------------------------


@pytest.mark.nats
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_bad_credentials_are_one_line_and_exit_code_2() -> None:
    async with EmbeddedNatsServer(config="authorization { user: ops, password: right }") as auth:
        wrong = await natspubsub(
            *at(auth, "topology", "show"), "--user", "ops", "--password", "wrong"
        )
        right = await natspubsub(
            *at(auth, "topology", "show"), "--user", "ops", "--password", "right"
        )

    assert_one_line_error(wrong, 2, "authorization violation")
    assert "wrong" not in wrong.err
    assert right.code == 0, right


@pytest.mark.nats
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_topology_show_lists_what_the_app_declared(server: EmbeddedNatsServer) -> None:
    # Given an app consuming its own topic and another app's, and a stream of another env
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")

    @pubsub.subscriber("order.created")
    async def created(body: dict[str, Any]) -> None: ...

    @pubsub.subscriber("payment.completed", app="payments")
    async def paid(body: dict[str, Any]) -> None: ...

    async with running(pubsub.broker):
        await pubsub.publish("order.created", {"id": 1})
        js = pubsub.broker.connection.jetstream()
        await js.add_stream(StreamConfig(name="PROD_ORDERS", subjects=["prod.orders.>"]))
        await wait_until(lambda: consumer_idle(js, "TEST_ORDERS", ORDERS_DURABLE), message="ack")
        # When
        as_json = await natspubsub(*at(server, "topology", "show"), "--json")
        as_table = await natspubsub(*at(server, "topology", "show"))

    # Then
    assert as_json.code == 0, as_json
    shown = as_json.json()
    streams = {s["name"]: s for s in shown["streams"]}
    assert sorted(streams) == ["DLQ_TEST_ORDERS", "TEST_ORDERS", "TEST_PAYMENTS"]
    assert streams["TEST_ORDERS"]["subjects"] == ["test.orders.>"]
    assert streams["TEST_ORDERS"]["messages"] == 1
    assert streams["TEST_ORDERS"]["replicas"] == 1
    assert streams["DLQ_TEST_ORDERS"]["subjects"] == ["dlq.test.orders.>"]
    [consumer] = streams["TEST_ORDERS"]["consumers"]
    assert consumer["name"] == ORDERS_DURABLE
    assert consumer["filter_subject"] == "test.orders.order.created"
    assert (consumer["num_pending"], consumer["num_ack_pending"]) == (0, 0)
    assert consumer["num_redelivered"] == 0
    payments_consumer = streams["TEST_PAYMENTS"]["consumers"][0]
    assert payments_consumer["name"] == consumer_name("orders", "test.payments.payment.completed")
    assert as_table.code == 0, as_table
    assert "TEST_ORDERS" in as_table.out
    assert ORDERS_DURABLE in as_table.out
    assert "PROD_ORDERS" not in as_table.out


@pytest.mark.nats
async def test_topology_ensure_creates_the_streams_and_never_clobbers_them(
    server: EmbeddedNatsServer,
) -> None:
    # Given an empty server
    first = await natspubsub(*at(server, "topology", "ensure"), "--json")
    # When an operator changes a setting and ensure runs again
    nc = await nats.connect(server.url)
    try:
        jsm = nc.jsm()
        info = await jsm.stream_info("TEST_ORDERS")
        info.config.max_msgs = 1234
        await jsm.update_stream(info.config)
        second = await natspubsub(*at(server, "topology", "ensure"), "--json")
        after = await jsm.stream_info("TEST_ORDERS")
        dlq = await jsm.stream_info("DLQ_TEST_ORDERS")
    finally:
        await nc.close()

    # Then the streams were created once, with NatsPubsub's settings, and left alone after
    assert first.code == 0, first
    assert [(r["name"], r["action"]) for r in first.json()] == [
        ("TEST_ORDERS", "created"),
        ("DLQ_TEST_ORDERS", "created"),
    ]
    assert [r["action"] for r in second.json()] == ["unchanged", "unchanged"]
    assert after.config.max_msgs == 1234
    assert after.config.subjects == ["test.orders.>"]
    assert dlq.config.subjects == ["dlq.test.orders.>"]
    assert dlq.config.max_age == 30 * 24 * 3600


class FailingApp:
    """An orders app whose handlers fail permanently until ``fixed`` is set."""

    def __init__(self, server: EmbeddedNatsServer) -> None:
        self.pubsub = NatsPubsub(new_broker(server), env="test", app="orders")
        self.fixed = False
        self.handled: list[tuple[str, int]] = []

        @self.pubsub.subscriber("order.created")
        async def created(body: dict[str, Any], meta: EventMetadata) -> None:
            self._handle(meta)

        @self.pubsub.subscriber("order.paid")
        async def paid(body: dict[str, Any], meta: EventMetadata) -> None:
            self._handle(meta)

    def _handle(self, meta: EventMetadata) -> None:
        if not self.fixed:
            raise PermanentError("bug in the handler")
        self.handled.append((meta.event_id, meta.replay_count))

    async def dead_letters(self) -> int:
        dlq = DeadLetterQueue(self.pubsub.broker.connection.jetstream(), env="test", app="orders")
        return len(await dlq.list())

    async def idle(self) -> bool:
        js = self.pubsub.broker.connection.jetstream()
        return await consumer_idle(js, "TEST_ORDERS", ORDERS_DURABLE) and await consumer_idle(
            js, "TEST_ORDERS", PAID_DURABLE
        )

    async def fail_two_events(self) -> tuple[str, str]:
        # One after the other: two consumers would otherwise race to the DLQ.
        created = await self.pubsub.publish("order.created", {"id": 1})
        await wait_until(lambda: self._dead_letters_are(1), message="the first DLQ record")
        paid = await self.pubsub.publish("order.paid", {"id": 2})
        await wait_until(lambda: self._dead_letters_are(2), message="the second DLQ record")
        return created.event_id, paid.event_id

    async def _dead_letters_are(self, count: int) -> bool:
        return await self.dead_letters() == count


@pytest.mark.nats
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_dlq_ls_lists_records_and_filters_them(server: EmbeddedNatsServer) -> None:
    failing = FailingApp(server)
    async with running(failing.pubsub.broker):
        created, paid = await failing.fail_two_events()

        listed = await natspubsub(*at(server, "dlq", "ls"), "--json")
        by_topic = await natspubsub(*at(server, "dlq", "ls"), "--topic", "order.paid", "--json")
        recent = await natspubsub(*at(server, "dlq", "ls"), "--since", "1h", "--json")
        future = await natspubsub(*at(server, "dlq", "ls"), "--since", "2999-01-01T00:00:00Z")
        limited = await natspubsub(*at(server, "dlq", "ls"), "--limit", "1", "--json")
        table = await natspubsub(*at(server, "dlq", "ls"))

    assert listed.code == 0, listed
    records = listed.json()
    assert [r["event_id"] for r in records] == [created, paid]
    assert records[0]["reason"] == "permanent_error"
    assert records[0]["topic"] == "order.created"
    assert records[0]["error_type"] == "PermanentError"
    assert [r["event_id"] for r in by_topic.json()] == [paid]
    assert len(recent.json()) == 2
    assert future.code == 0
    assert future.out.strip() == "no dead-letter records"
    assert [r["event_id"] for r in limited.json()] == [created]
    assert table.code == 0, table
    assert created in table.out
    assert "test.orders.order.paid" in table.out
    assert "PermanentError: bug in the handler" in table.out


@pytest.mark.nats
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_dlq_show_prints_one_record_in_full(server: EmbeddedNatsServer) -> None:
    failing = FailingApp(server)
    async with running(failing.pubsub.broker):
        created, _ = await failing.fail_two_events()

        as_json = await natspubsub(*at(server, "dlq", "show", created), "--json")
        by_seq = await natspubsub(*at(server, "dlq", "show"), "--seq", "2", "--json")
        text = await natspubsub(*at(server, "dlq", "show", created))
        unknown = await natspubsub(*at(server, "dlq", "show", "no-such-event"))
        no_seq = await natspubsub(*at(server, "dlq", "show"), "--seq", "99")

    assert as_json.code == 0, as_json
    record = as_json.json()
    assert record["event_id"] == created
    assert record["envelope"]["message"] == {"id": 1}
    assert record["original_subject"] == "test.orders.order.created"
    assert record["dlq_seq"] == 1
    assert by_seq.json()["dlq_seq"] == 2
    assert text.code == 0, text
    assert "event id:" in text.out
    assert created in text.out
    assert "traceback:" in text.out
    assert "PermanentError: bug in the handler" in text.out
    assert_one_line_error(unknown, 1, "no dead-letter record for event 'no-such-event'")
    assert_one_line_error(no_seq, 1, "no dead-letter record at seq 99")


@pytest.mark.nats
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_dlq_replay_delivers_each_event_once_to_the_fixed_handler(
    server: EmbeddedNatsServer,
) -> None:
    # Given two dead-lettered events and a handler that is fixed now
    failing = FailingApp(server)
    async with running(failing.pubsub.broker):
        created, paid = await failing.fail_two_events()
        failing.fixed = True

        # When one is replayed by id, then a dry run and a replay of all the rest
        one = await natspubsub(*at(server, "dlq", "replay", created))
        await wait_until(lambda: len(failing.handled) == 1, message="the replayed event")
        dry = await natspubsub(*at(server, "dlq", "replay"), "--all", "--dry-run", "--json")
        rest = await natspubsub(*at(server, "dlq", "replay"), "--all", "--json")
        await wait_until(lambda: len(failing.handled) == 2, message="the second replay")
        await wait_until(failing.idle, message="idle consumers")
        left = await failing.dead_letters()
        again = await natspubsub(*at(server, "dlq", "replay"), "--all")

    # Then each event reached the handler exactly once, marked as a replay
    assert one.code == 0, one
    assert f"replayed event {created} to test.orders.order.created" in one.out
    assert [r["event_id"] for r in dry.json()] == [paid]
    assert rest.code == 0, rest
    assert [(r["event_id"], r["subject"]) for r in rest.json()] == [
        (paid, "test.orders.order.paid")
    ]
    assert failing.handled == [(created, 1), (paid, 1)]
    assert left == 0
    assert again.out.strip() == "nothing to replay"


@pytest.mark.nats
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_dlq_purge_needs_yes_and_honours_older_than(server: EmbeddedNatsServer) -> None:
    failing = FailingApp(server)
    async with running(failing.pubsub.broker):
        await failing.fail_two_events()

        refused = await natspubsub(*at(server, "dlq", "purge"))
        kept = await natspubsub(*at(server, "dlq", "purge"), "--older-than", "1h", "--yes")
        everything = await natspubsub(*at(server, "dlq", "purge"), "--yes", "--json")
        left = await failing.dead_letters()

    assert_one_line_error(refused, 2, "add --yes")
    assert kept.code == 0, kept
    assert kept.out.strip() == "purged 0 records from DLQ_TEST_ORDERS"
    assert everything.json() == {"stream": "DLQ_TEST_ORDERS", "purged": 2}
    assert left == 0


@pytest.mark.nats
async def test_dlq_commands_on_a_missing_dlq_stream_say_so(server: EmbeddedNatsServer) -> None:
    result = await natspubsub(*at(server, "dlq", "ls"))

    assert_one_line_error(result, 1, "no dead-letter stream DLQ_TEST_ORDERS")


@pytest.mark.nats
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_health_exits_0_when_the_app_is_healthy(server: EmbeddedNatsServer) -> None:
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")

    @pubsub.subscriber("order.created")
    async def created(body: dict[str, Any]) -> None: ...

    async with running(pubsub.broker):
        as_json = await natspubsub(*at(server, "health"), "--json")
        table = await natspubsub(*at(server, "health"))

    assert as_json.code == 0, as_json
    report = as_json.json()
    assert report["status"] == "healthy"
    assert sorted(report["components"]) == [
        "connection",
        f"consumer:TEST_ORDERS/{ORDERS_DURABLE}",
        "jetstream",
        "stream:DLQ_TEST_ORDERS",
        "stream:TEST_ORDERS",
    ]
    assert table.code == 0, table
    assert table.out.strip().endswith("status: healthy")


@pytest.mark.nats
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_health_exits_1_when_a_consumer_lags(server: EmbeddedNatsServer) -> None:
    # Given the app's topology, and events published while no instance consumes them
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")

    @pubsub.subscriber("order.created")
    async def created(body: dict[str, Any]) -> None: ...

    await pubsub.broker.connect()
    try:
        await pubsub.declare_topology()
        await pubsub.publish_many([("order.created", {"n": n}) for n in range(3)])
    finally:
        await pubsub.broker.stop()

    # When checked with a small threshold, and with the default one
    lagging = await natspubsub(*at(server, "health"), "--max-pending", "2", "--json")
    tolerant = await natspubsub(*at(server, "health"))

    # Then
    assert lagging.code == 1, lagging
    report = lagging.json()
    assert report["status"] == "degraded"
    consumer = report["components"][f"consumer:TEST_ORDERS/{ORDERS_DURABLE}"]
    assert consumer["num_pending"] == 3
    assert consumer["detail"] == "3 pending > 2"
    assert tolerant.code == 0, tolerant


@pytest.mark.nats
@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_health_exits_2_when_streams_are_missing_or_the_server_is_down(
    own_server: EmbeddedNatsServer,
) -> None:
    server = own_server  # this test stops its server: a private one
    args = at(server, "health", "--json")
    missing = await natspubsub(*args)
    await server.stop()
    down = await natspubsub(*args)

    assert missing.code == 2, missing
    assert missing.json()["components"]["stream:TEST_ORDERS"]["detail"] == "missing"
    assert missing.err == ""
    assert down.code == 2, down
    assert down.json()["status"] == "unhealthy"
    assert_one_line_error(down, 2, "cannot connect")


@pytest.mark.nats
@pytest.mark.slow  # a child interpreter (or the docs build): seconds
async def test_the_demo_command_runs_the_demo() -> None:
    result = await natspubsub("demo")

    assert result.code == 0, result
    assert "demo finished: 2 orders paid" in result.out
