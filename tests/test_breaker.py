"""The circuit breaker's state machine (an injected clock, no sleeps) and its registration."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from faststream.nats import NatsBroker, PullSub
from nats.aio.msg import Msg
from support import FakeNatsClient, fake_pull_parts, wait_until

from faststream_natspubsub import (
    BatchSettings,
    BreakerState,
    CircuitBreaker,
    ConfigurationError,
    NatsPubsub,
)
from faststream_natspubsub.breaker import BreakerMachine, SubscriberBreaker, Verdict
from faststream_natspubsub.dispatch import DispatchSettings, _Run
from faststream_natspubsub.metrics import PubsubMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def machine(**config: Any) -> tuple[BreakerMachine, Clock]:
    clock = Clock()
    return BreakerMachine(CircuitBreaker(**config), clock=clock), clock


def test_it_opens_after_the_given_number_of_different_events_fail_in_a_row() -> None:
    breaker, _ = machine(failures=3)

    assert [breaker.failure(f"e{n}") for n in range(3)] == [
        Verdict.COUNTED,
        Verdict.COUNTED,
        Verdict.OPENED,
    ]
    assert breaker.state is BreakerState.OPEN
    assert not breaker.may_start()
    assert not breaker.may_fetch()


def test_one_event_failing_again_and_again_never_opens_it() -> None:
    breaker, _ = machine(failures=2)

    verdicts = {breaker.failure("poison") for _ in range(50)}

    assert verdicts == {Verdict.COUNTED}
    assert breaker.state is BreakerState.CLOSED
    assert breaker.may_start()


def test_a_success_in_between_starts_the_count_again() -> None:
    breaker, _ = machine(failures=3)
    breaker.failure("a")
    breaker.failure("b")

    breaker.success()

    assert breaker.failing == 0
    assert breaker.failure("c") is Verdict.COUNTED
    assert breaker.failure("d") is Verdict.COUNTED
    assert breaker.failure("e") is Verdict.OPENED


def test_after_the_cooldown_exactly_one_probe_may_start() -> None:
    breaker, clock = machine(failures=1, cooldown=5.0)
    breaker.failure("a")
    clock.now += 4.9
    assert breaker.until_probe() == pytest.approx(0.1)
    assert not breaker.may_start()

    clock.now += 0.1

    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.may_fetch()
    assert breaker.may_start()  # the probe
    assert not breaker.may_start()
    assert not breaker.may_fetch()


def test_a_failed_probe_opens_it_again_for_twice_as_long_up_to_the_maximum() -> None:
    breaker, clock = machine(failures=1, cooldown=5.0, max_cooldown=12.0)
    breaker.failure("a")
    cooldowns = []
    for _ in range(4):
        clock.now += breaker.cooldown
        assert breaker.may_start()
        assert breaker.failure("a") is Verdict.REOPENED
        cooldowns.append(breaker.cooldown)

    assert cooldowns == [10.0, 12.0, 12.0, 12.0]
    assert breaker.state is BreakerState.OPEN


def test_a_successful_probe_closes_it_and_resets_the_cooldown() -> None:
    breaker, clock = machine(failures=1, cooldown=5.0)
    breaker.failure("a")
    clock.now += 5.0
    breaker.may_start()
    breaker.failure("a")
    clock.now += 10.0
    breaker.may_start()

    assert breaker.success() is True

    assert breaker.state is BreakerState.CLOSED
    assert breaker.cooldown == 5.0
    assert breaker.success() is False  # already closed


def test_failures_while_open_are_held_without_extending_the_cooldown() -> None:
    breaker, clock = machine(failures=1, cooldown=5.0)
    breaker.failure("a")
    clock.now += 3.0

    assert breaker.failure("b") is Verdict.HELD

    assert breaker.until_probe() == pytest.approx(2.0)


def test_a_probe_that_ends_with_neither_verdict_lets_the_next_one_probe() -> None:
    breaker, clock = machine(failures=1, cooldown=1.0)
    breaker.failure("a")
    clock.now += 1.0
    assert breaker.may_start()

    breaker.probe_ended()  # e.g. a permanent error: dead-lettered, not counted

    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.may_start()


@pytest.mark.parametrize(
    "config",
    [{"failures": 0}, {"cooldown": 0}, {"cooldown": 10.0, "max_cooldown": 5.0}],
)
def test_nonsensical_settings_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**config)


def test_the_subscriber_breaker_holds_only_while_a_dispatch_runs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    breaker = SubscriberBreaker(
        CircuitBreaker(failures=1, cooldown=2.0),
        subject="test.orders.x",
        durable="d",
        metrics=PubsubMetrics(),
        clock=clock,
    )
    msg = object()
    # Not attached (in memory, or stopped): failures are retried as usual
    assert breaker.failed(msg, "a", ConnectionError("down")) is False
    assert breaker.state is BreakerState.CLOSED

    changes: list[BreakerState] = []
    breaker.attach(lambda: changes.append(breaker.state))
    with caplog.at_level(logging.INFO, logger="faststream_natspubsub.breaker"):
        held = breaker.failed(msg, "a", ConnectionError("down"))
        clock.now += 2.0
        breaker.machine.may_start()
        breaker.succeeded()

    assert held is True
    assert breaker.take_held(msg) is True
    assert breaker.take_held(msg) is False
    assert changes == [BreakerState.OPEN, BreakerState.CLOSED]
    levels = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
    assert levels[0][0] == "WARNING"
    assert "opened" in levels[0][1]
    assert "ConnectionError: down" in caplog.records[0].getMessage()
    assert levels[1][0] == "INFO"
    assert "closed" in levels[1][1]
    assert breaker.health() == {"circuit_breaker": "closed"}


# -- registration ----------------------------------------------------------------------------


def _pubsub(**kwargs: Any) -> NatsPubsub:
    return NatsPubsub(NatsBroker(), env="test", app="orders", **kwargs)


def _subscribe(pubsub: NatsPubsub, topic: str, handler: Any = None, **kwargs: Any) -> Any:
    subscriber = pubsub.subscriber(topic, **kwargs)
    subscriber(handler or _handler)
    return subscriber


def _breaker_of(pubsub: NatsPubsub, subscriber: Any) -> Any:
    plan = pubsub._registrar.host.plan_for(subscriber)
    assert plan is not None
    return plan.breaker


def test_every_subscriber_has_the_app_breaker_by_default_and_can_have_its_own_or_none() -> None:
    pubsub = _pubsub()
    own = CircuitBreaker(failures=2)

    default = _subscribe(pubsub, "a.default", _handler)
    custom = _subscribe(pubsub, "a.custom", _handler, circuit_breaker=own)
    off = _subscribe(pubsub, "a.off", _handler, circuit_breaker=False)
    none = _subscribe(pubsub, "a.none", _handler, circuit_breaker=None)

    assert _breaker_of(pubsub, default).machine.config == CircuitBreaker()
    assert _breaker_of(pubsub, custom).machine.config is own
    assert _breaker_of(pubsub, off) is None
    assert _breaker_of(pubsub, none) is None


def test_an_app_without_a_breaker_gives_its_subscribers_none() -> None:
    pubsub = _pubsub(circuit_breaker=None)

    subscriber = _subscribe(pubsub, "a.b", _handler)

    assert _breaker_of(pubsub, subscriber) is None


def test_batch_and_own_pull_sub_subscribers_refuse_an_explicit_breaker() -> None:
    pubsub = _pubsub()

    with pytest.raises(ConfigurationError, match="circuit_breaker needs the package's own"):
        pubsub.subscriber(
            "a.batch", batch=BatchSettings(max_messages=10), circuit_breaker=CircuitBreaker()
        )
    with pytest.raises(ConfigurationError, match="circuit_breaker needs the package's own"):
        pubsub.subscriber(
            "a.pull", pull_sub=PullSub(batch_size=10), circuit_breaker=CircuitBreaker()
        )


def test_batch_subscribers_do_not_take_the_app_default() -> None:
    pubsub = _pubsub()

    subscriber = _subscribe(pubsub, "a.batch", _batch, batch=BatchSettings(max_messages=10))

    assert _breaker_of(pubsub, subscriber) is None


def test_a_breaker_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="circuit_breaker must be"):
        _pubsub(circuit_breaker=True)
    with pytest.raises(ConfigurationError, match="circuit_breaker must be"):
        _pubsub().subscriber("a.b", circuit_breaker="on")  # type: ignore[arg-type]


async def _handler(body: dict[str, Any]) -> None:
    return None


async def _batch(items: list[dict[str, Any]]) -> None:
    return None


def test_openings_held_failures_and_open_subscribers_are_measured() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    clock = Clock()
    breaker = SubscriberBreaker(
        CircuitBreaker(failures=1, cooldown=1.0),
        subject="test.orders.x",
        durable="d",
        metrics=PubsubMetrics(MeterProvider(metric_readers=[reader])),
        clock=clock,
    )
    breaker.attach(lambda: None)
    breaker.failed(object(), "a", ConnectionError("down"))
    clock.now += 1.0
    breaker.machine.may_start()
    breaker.failed(object(), "a", ConnectionError("down"))  # the probe failed

    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, dict(point.attributes or {}).get("natspubsub.cause")): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points  # type: ignore[union-attr]
    }
    assert points[("natspubsub.breaker.opened", "failures")] == 1
    assert points[("natspubsub.breaker.opened", "probe_failed")] == 1
    assert points[("natspubsub.breaker.held", None)] == 2
    assert points[("natspubsub.breaker.open", None)] == 1


# -- the dispatch's probe --------------------------------------------------------------------


class _ScriptedClock(Clock):
    """Returns ``script``'s values first, then ``now``."""

    def __init__(self) -> None:
        super().__init__()
        self.script: list[float] = []

    def __call__(self) -> float:
        return self.script.pop(0) if self.script else self.now


async def test_a_probe_started_as_the_cooldown_ends_is_known_as_the_probe() -> None:
    # Before: the dispatch read the state (open), then may_start read the clock again (the
    # cooldown just over) and started the probe as an ordinary message; when it ended with
    # neither verdict the breaker stayed half-open and probing for good: nothing more ran.
    clock = _ScriptedClock()
    breaker = SubscriberBreaker(
        CircuitBreaker(failures=1, cooldown=5.0),
        subject="s",
        durable="d",
        metrics=PubsubMetrics(),
        clock=clock,
    )
    client = FakeNatsClient()
    parts = fake_pull_parts(client)
    handled: list[str] = []

    async def consume(msg: Msg) -> None:  # a duplicate, say: neither success nor failure
        handled.append(msg.reply.split(".")[5])

    run = _Run(DispatchSettings(ack_wait=30.0, breaker=breaker), parts, consume)
    task = asyncio.ensure_future(run.serve())
    try:
        await wait_until(lambda: bool(run._idle), message="the workers wait")
        breaker.failed(object(), "e1", RuntimeError("down"))  # open until 105
        for seq in (1, 2, 3):
            parts.queue.put_nowait(
                Msg(_client=client, subject="s", reply=f"$JS.ACK.S.C.1.{seq}.{seq}.0.0")  # type: ignore[arg-type]
            )
        await wait_until(lambda: len(run.ready) == 3, message="held while open")
        clock.script[:] = [104.9999999, 105.0]  # a worker looks just as the cooldown ends
        run._wake(1)
        await asyncio.sleep(0)
        clock.now = 200.0
        run._wake(len(run._idle))
        await wait_until(lambda: len(handled) == 3, message="every message handled")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert handled == ["1", "2", "3"]
