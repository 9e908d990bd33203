"""Middleware logic in memory: publish retries keep one Nats-Msg-Id, errors are classified."""

from __future__ import annotations

from typing import Any

import pytest
from faststream import ContextRepo
from faststream.nats.response import NatsPublishCommand
from faststream.response.publish_type import PublishType
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel, ValidationError

from faststream_natspubsub import (
    EnvelopeMiddleware,
    FailureMiddleware,
    MalformedEnvelopeError,
    OutgoingEvent,
    PermanentError,
    PublishError,
    RetryPolicy,
)


def publish_command(body: Any, subject: str = "test.orders.order.created") -> NatsPublishCommand:
    return NatsPublishCommand(
        body, subject=subject, stream="TEST_ORDERS", _publish_type=PublishType.PUBLISH
    )


async def test_a_timed_out_publish_is_retried_with_the_same_msg_id() -> None:
    # Given a server whose first two PubAcks are lost
    middleware = EnvelopeMiddleware(env="test", app="orders")(None, context=ContextRepo())
    sent: list[tuple[str, bytes]] = []

    async def flaky_server(cmd: NatsPublishCommand) -> str:
        sent.append((cmd.headers["Nats-Msg-Id"], cmd.body))
        if len(sent) < 3:
            raise NatsTimeoutError
        return "ack"

    # When one event is published
    result = await middleware.publish_scope(flaky_server, publish_command({"a": 1}))

    # Then three identical attempts were made: the server can store it only once
    assert result == "ack"
    assert len(sent) == 3
    assert len(set(sent)) == 1


async def test_publish_gives_up_with_a_publish_error_after_bounded_attempts() -> None:
    middleware = EnvelopeMiddleware(env="test", app="orders")(None, context=ContextRepo())
    attempts = 0

    async def dead_server(cmd: NatsPublishCommand) -> None:
        nonlocal attempts
        attempts += 1
        raise NatsTimeoutError

    with pytest.raises(PublishError, match="3 attempts"):
        await middleware.publish_scope(dead_server, publish_command({"a": 1}))
    assert attempts == 3


async def test_an_outgoing_event_keeps_its_id_and_metadata() -> None:
    middleware = EnvelopeMiddleware(env="test", app="orders", app_version="1.2")(
        None, context=ContextRepo()
    )
    captured: list[NatsPublishCommand] = []

    async def server(cmd: NatsPublishCommand) -> None:
        captured.append(cmd)

    event = OutgoingEvent(message={"a": 1}, event_id="fixed", metadata={"tenant_id": "t1"})
    await middleware.publish_scope(server, publish_command(event))
    cmd = captured[0]
    assert cmd.headers["Nats-Msg-Id"] == "fixed"
    assert b'"tenant_id":"t1"' in cmd.body
    assert b'"app_version":"1.2"' in cmd.body
    assert b'"topic":"order.created"' in cmd.body


async def test_subjects_outside_the_env_pass_through_untouched() -> None:
    middleware = EnvelopeMiddleware(env="test", app="orders")(None, context=ContextRepo())
    captured: list[NatsPublishCommand] = []

    async def server(cmd: NatsPublishCommand) -> None:
        captured.append(cmd)

    await middleware.publish_scope(server, publish_command(b"raw", subject="legacy.jobs"))
    assert captured[0].body == b"raw"
    assert "Nats-Msg-Id" not in captured[0].headers


class Strict(BaseModel):
    n: int


def validation_error() -> ValidationError:
    try:
        Strict(n="x")  # type: ignore[arg-type]
    except ValidationError as exc:
        return exc
    raise AssertionError


class QuotaExceeded(Exception):
    pass


class Flaky(PermanentError):
    pass


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (RuntimeError("x"), False),
        (ConnectionError("x"), False),
        (TimeoutError(), False),
        (PermanentError("x"), True),
        (MalformedEnvelopeError("x"), True),
        (QuotaExceeded(), True),  # added by dead_letter_on
        (Flaky("x"), False),  # retry_on wins
    ],
)
def test_errors_are_classified_with_user_additions(error: Exception, permanent: bool) -> None:
    policy = RetryPolicy(retry_on=(Flaky,), dead_letter_on=(QuotaExceeded,))
    assert FailureMiddleware(env="test", retry=policy).is_permanent(error) is permanent


def test_validation_errors_are_permanent() -> None:
    assert FailureMiddleware(env="test").is_permanent(validation_error())


class _Raw:
    def __init__(self, reply: str) -> None:
        self.reply = reply


@pytest.mark.parametrize(
    ("reply", "count"),
    [
        ("$JS.ACK.ORDERS.payments.3.17.20.1700000000000000000.4", 3),
        ("$JS.ACK.hub.ACCHASH.ORDERS.payments.7.17.20.1700000000000000000.4.abc", 7),
        ("", 1),
        ("_INBOX.abc", 1),
        ("$JS.ACK.broken", 1),
    ],
)
def test_the_delivery_count_is_read_from_the_reply_subject(reply: str, count: int) -> None:
    from faststream_natspubsub.middlewares.failure import delivery_count

    assert delivery_count(_Raw(reply)) == count


def test_a_delivery_is_logged_under_its_envelope_event_id_not_its_msg_id() -> None:
    from types import SimpleNamespace

    from faststream_natspubsub.middlewares.failure import Delivery

    raw = SimpleNamespace(subject="dev.a.b", data=b"{}", headers={"Nats-Msg-Id": "copy-7"})
    # A copy re-published under another Nats-Msg-Id: the logs name the event, not the copy
    assert Delivery.of(raw, event_id="evt-1").log_fields()["natspubsub_event_id"] == "evt-1"
    # Not decoded (malformed): the header is all there is
    assert Delivery.of(raw).event_id == "copy-7"


@pytest.mark.parametrize("app_version", [None, "1.2"])
@pytest.mark.parametrize("correlation_id", [None, "c-1"])
def test_the_usual_publishs_envelope_is_the_one_the_general_path_builds(
    app_version: str | None, correlation_id: str | None
) -> None:
    # No handled event, no trace, no metadata: built at once, it must not differ (keys,
    # values, order) from the envelope the general path builds (here: trace on, no span).
    config = EnvelopeMiddleware(env="test", app="orders", app_version=app_version)
    event = OutgoingEvent(message={"id": 1}, event_id="evt-1")
    now = "2026-12-03T00:00:00.000Z"
    usual = config.build_envelope(
        "order.created", event, None, now=now, trace=False, correlation_id=correlation_id
    )
    general = config.build_envelope(
        "order.created", event, None, now=now, trace=True, correlation_id=correlation_id
    )
    assert list(usual["metadata"].items()) == list(general["metadata"].items())
    assert list(usual.items()) == list(general.items())
    assert usual["metadata"]["correlation_id"] == (correlation_id or "evt-1")
    assert usual["metadata"].get("app_version") == app_version
