"""What can never work is refused when it is set up, with an error that says what to do;
what no retry can fix is dead-lettered at once, not retried."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from faststream.nats import NatsBroker, PullSub
from pydantic import BaseModel
from support import new_broker

from faststream_natspubsub import BatchSettings, ConfigurationError, NatsPubsub, RetryPolicy
from faststream_natspubsub.testing import EmbeddedNatsServer, TestNatsPubsub


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"stream": "FOO"}, "streams=StreamSettings"),
        ({"subject": "a.b"}, "pass the topic"),
        ({"config": object()}, "ack_wait="),
        ({"ack_policy": object()}, "PermanentError or RetryLater"),
        ({"queue": "workers"}, "durable pull consumers"),
        ({"deliver_policy": object()}, "every event"),
    ],
)
def test_arguments_the_facade_manages_are_refused_at_registration(
    kwargs: dict[str, Any], says: str
) -> None:
    pubsub = NatsPubsub(NatsBroker(), env="t", app="orders")
    name = next(iter(kwargs))
    with pytest.raises(ConfigurationError, match=f"{name}= is managed by NatsPubsub") as info:
        pubsub.subscriber("z", **kwargs)
    assert says in str(info.value)


def test_a_publisher_with_its_own_stream_is_refused() -> None:
    pubsub = NatsPubsub(NatsBroker(), env="t", app="orders")
    with pytest.raises(ConfigurationError, match="stream= is managed"):
        pubsub.publisher("z", stream="FOO")


def test_a_durable_already_used_by_another_subscriber_is_refused() -> None:
    pubsub = NatsPubsub(NatsBroker(), env="t", app="orders")
    pubsub.subscriber("a", durable="shared")
    with pytest.raises(ConfigurationError, match="'shared' is already used"):
        pubsub.subscriber("b", durable="shared")


@pytest.mark.parametrize(
    "kwargs",
    [{"pull_sub": PullSub(batch_size=10)}, {"batch": BatchSettings(max_messages=10)}],
)
def test_order_by_without_the_packages_own_fetching_is_refused(kwargs: dict[str, Any]) -> None:
    pubsub = NatsPubsub(NatsBroker(), env="t", app="orders")
    with pytest.raises(ConfigurationError, match="order_by needs the package's own fetching"):
        pubsub.subscriber("z", order_by="tenant_id", **kwargs)
    with pytest.raises(ConfigurationError, match="order_by needs"):
        pubsub.router().subscriber("y", order_by="tenant_id", **kwargs)


@pytest.mark.parametrize(("order_by", "says"), [("  ", "name a field"), (42, "callable")])
def test_an_order_by_that_is_neither_a_field_nor_a_callable_is_refused(
    order_by: Any, says: str
) -> None:
    pubsub = NatsPubsub(NatsBroker(), env="t", app="orders")
    with pytest.raises(ConfigurationError, match=says):
        pubsub.subscriber("z", order_by=order_by)


def test_max_workers_below_one_is_refused() -> None:
    pubsub = NatsPubsub(NatsBroker(), env="t", app="orders")
    with pytest.raises(ConfigurationError, match="max_workers must be at least 1"):
        pubsub.subscriber("z", max_workers=0)


def make_app_with_an_undefined_model(broker: NatsBroker) -> NatsPubsub:
    pubsub = NatsPubsub(broker, env="t", app="payments", retry=RetryPolicy(backoff=(0.01,)))

    class Charge(BaseModel):  # local: invisible to the handler's string annotation
        amount: int

    @pubsub.subscriber("order.created", app="orders")
    async def charge(order: Charge) -> None: ...

    return pubsub


@pytest.mark.nats
async def test_a_handler_whose_model_cannot_be_built_fails_the_start(
    server: EmbeddedNatsServer,
) -> None:
    pubsub = make_app_with_an_undefined_model(new_broker(server))
    with pytest.raises(ConfigurationError, match=r"charge of 't\.orders\.order\.created' cannot"):
        await pubsub.broker.start()


async def test_in_memory_such_a_handler_is_dead_lettered_at_once_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # TestNatsBroker starts no connection, so the start check does not run; the delivery
    # itself is classified: no retry can fix code
    pubsub = make_app_with_an_undefined_model(NatsBroker())
    caplog.set_level(logging.INFO, logger="faststream_natspubsub")
    async with TestNatsPubsub(pubsub) as tp:
        await pubsub.broker.publish({"amount": 1}, "t.orders.order.created")
    assert tp.redeliveries == []
    assert [r.reason for r in tp.dead_letters] == ["programming_error"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []
