"""The permission generator and the violation watch, without a server."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from permission_support import NOWHERE, ORDERS_PREFIX, broker_as, consumer_set, orders_app

from faststream_natspubsub import (
    ConfigurationError,
    NatsPubsub,
    PermissionDeniedError,
    PublishError,
)
from faststream_natspubsub.errors import NatsPubsubError
from faststream_natspubsub.permissions import ROLES
from faststream_natspubsub.violations import PermissionWatch, Violation, restore_case, violation_in

APP_ROLES = ("publisher", "consumer", "health")


def _error(text: str) -> Exception:
    """What nats-py hands the error callback: the server's line, lower-cased."""
    return Exception(f"nats: {text.lower()}")


def test_an_apps_roles_name_every_jetstream_api_subject_exactly() -> None:
    permissions = orders_app(NOWHERE, inbox="kv").pubsub.permissions(*APP_ROLES)
    api = [p.subject for p in permissions.permissions if p.subject.startswith("$JS.API")]
    assert api
    # (a consumer of a wildcard topic would carry its filter's wildcard, nothing else)
    assert all("*" not in s and ">" not in s for s in api), api


def test_verify_mode_needs_no_right_to_create_streams_or_durables() -> None:
    verify = consumer_set("kv", topology="verify")
    created = [p.subject for p in verify.permissions if ".CREATE." in p.subject]
    # Only the in-memory reader of an advisory's event, which is not topology
    assert created
    assert all("-advisory-read." in subject for subject in created), created
    assert "$JS.API.STREAM.CREATE.DLQ_TEST_ORDERS" in consumer_set().publish


def test_the_consumer_set_has_no_read_right_on_the_source_stream() -> None:
    # The advisory's event is read through a reader filtered like the consumer
    subjects = consumer_set().publish
    assert not any(s.startswith("$JS.API.STREAM.MSG.GET.TEST_PAYMENTS") for s in subjects)
    assert not any(s.startswith("$JS.API.DIRECT.GET") for s in subjects)


def test_every_subject_appears_once_and_keeps_every_subscriber_that_needs_it() -> None:
    pubsub = orders_app(NOWHERE, inbox="kv").pubsub

    @pubsub.subscriber("payment.refunded", app="payments")
    async def refunded(body: Any) -> None: ...

    permissions = pubsub.permissions("consumer", "health")
    keys = [(p.action, p.subject) for p in permissions.permissions]
    assert len(keys) == len(set(keys))
    kv = next(p for p in permissions.permissions if p.subject.startswith("$KV."))
    reply = next(p for p in permissions.permissions if p.subject == f"{ORDERS_PREFIX}.>")
    assert len(kv.needed_by) == 2
    assert reply.needed_by == kv.needed_by


def test_the_config_block_allows_each_subject_with_a_comment() -> None:
    text = consumer_set().to_config()
    assert text.startswith("# natspubsub permissions of app 'orders' in env 'test'")
    assert '      "$JS.API.INFO"  # health: JetStream answers' in text
    assert f'      "{ORDERS_PREFIX}.>"  #' in text
    assert text.count("allow = [") == 2


def test_a_section_with_nothing_allowed_denies_everything() -> None:
    subscribes = [p for p in consumer_set().permissions if p.action == "subscribe"]
    only_publish = consumer_set()
    for permission in subscribes:
        only_publish = only_publish.without(permission)
    assert '  subscribe {\n    deny = [">"]\n  }' in only_publish.to_config()


@pytest.mark.parametrize(
    ("roles", "error"),
    [((), "roles must be"), (("root",), "root"), (("consumer",), "no subscribers")],
)
def test_roles_are_checked(roles: tuple[str, ...], error: str) -> None:
    pubsub = NatsPubsub(broker_as(NOWHERE, "x"), env="test", app="lonely")
    with pytest.raises(ConfigurationError, match=error):
        pubsub.permissions(*roles)


def test_every_role_is_known() -> None:
    assert set(ROLES) == {"publisher", "consumer", "health", "operator"}


def test_a_violation_is_read_from_the_servers_words() -> None:
    published = violation_in(_error('Permissions Violation for Publish to "$JS.API.INFO"'))
    refused_sub = violation_in(_error('Permissions Violation for Subscription to "ev.x" (sid "3")'))
    assert published == Violation("publish", "$js.api.info")
    assert refused_sub == Violation("subscribe", "ev.x")
    assert violation_in(_error("stale connection")) is None


def test_a_lower_cased_subject_gets_its_case_back() -> None:
    assert (
        restore_case("$js.api.stream.info.dlq_test_orders") == "$JS.API.STREAM.INFO.dlq_test_orders"
    )
    assert (
        restore_case("$js.api.stream.info.dlq_test_orders", names=["DLQ_TEST_ORDERS"])
        == "$JS.API.STREAM.INFO.DLQ_TEST_ORDERS"
    )
    assert restore_case("x.y", ["X.y"]) == "X.y"
    assert restore_case("test.orders.created") == "test.orders.created"


def test_the_error_is_a_publish_error_naming_subject_and_permission() -> None:
    error = PermissionDeniedError("publish", "$JS.API.INFO", what="health")
    assert isinstance(error, PublishError)
    assert isinstance(error, NatsPubsubError)
    assert str(error).startswith(
        'health: permission denied: the user may not publish to "$JS.API.INFO"'
    )
    assert "publish allow list" in str(error)


async def test_a_refusal_ends_the_waiting_request_at_once() -> None:
    watch = PermissionWatch(inbox_prefix="_INBOX_x")
    never = asyncio.Event()
    waiting = asyncio.create_task(watch.guard(never.wait(), subject="$JS.API.STREAM.INFO.S"))
    other = asyncio.create_task(watch.guard(never.wait(), subject="$JS.API.STREAM.INFO.T"))
    await asyncio.sleep(0)

    watch.hear(_error('Permissions Violation for Publish to "$JS.API.STREAM.INFO.S"'))

    with pytest.raises(PermissionDeniedError, match=r'"\$JS.API.STREAM.INFO.S"'):
        await waiting
    assert not other.done()  # another subject's request keeps waiting
    other.cancel()


async def test_a_refused_reply_subscription_ends_every_request_now_and_later() -> None:
    watch = PermissionWatch(inbox_prefix="_INBOX_x")
    never = asyncio.Event()
    waiting = asyncio.create_task(watch.guard(never.wait(), subject="$JS.API.INFO"))
    await asyncio.sleep(0)

    watch.hear(_error('Permissions Violation for Subscription to "_INBOX_x.abc.*"'))

    with pytest.raises(PermissionDeniedError, match=r'"_INBOX_x\.>"'):
        await waiting
    with pytest.raises(PermissionDeniedError, match="subscribe"):
        await watch.guard(never.wait(), subject="$JS.API.INFO")
    watch.connected()
    assert watch.reply_refusal is None


async def test_a_cancellation_from_outside_wins_over_a_refusal() -> None:
    watch = PermissionWatch()
    never = asyncio.Event()
    waiting = asyncio.create_task(watch.guard(never.wait(), subject="a.b"))
    await asyncio.sleep(0)
    waiting.cancel()
    watch.hear(_error('Permissions Violation for Publish to "a.b"'))
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_refusal_whose_cancel_was_swallowed_inside_still_fails_and_leaves_none() -> None:
    # nats-py's forced flush swallows a cancel. Before: the guard left it counted, and the
    # next guard's cancel was taken for one from outside and escaped as CancelledError.
    watch = PermissionWatch()

    async def swallowing_then_waiting() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()  # cancelled by the guard, and the cancel swallowed

    async def guarded_publish() -> None:
        with watch.guarding_request("a.b"):
            asyncio.get_running_loop().call_soon(
                watch.hear, _error('Permissions Violation for Publish to "a.b"')
            )
            await swallowing_then_waiting()

    async def publish_twice() -> None:
        for _ in range(2):
            with pytest.raises(PermissionDeniedError):
                await guarded_publish()
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    await asyncio.create_task(publish_twice())


async def test_listeners_hear_every_violation_and_guards_only_theirs() -> None:
    watch = PermissionWatch()
    heard: list[Violation] = []
    watch.add_listener(heard.append)
    mark = watch.count
    watch.hear(_error('Permissions Violation for Publish to "a.b"'))
    watch.hear(Exception("nats: unknown protocol operation"))
    assert heard == [Violation("publish", "a.b")]
    assert watch.since(mark) == heard
    watch.remove_listener(heard.append)
