"""``check_health``: the rules on in-memory fakes, then once against a real server."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlparse

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy
from nats.js.errors import NotFoundError
from support import new_broker, running, wait_until

from faststream_natspubsub import NatsPubsub
from faststream_natspubsub.health import (
    ComponentHealth,
    HealthReport,
    HealthStatus,
    check_health,
)
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer

DURABLE = "orders__test_orders_order_created_12345678"


class FakeJetStream:
    """The three JetStream calls ``check_health`` makes, answered from dicts."""

    def __init__(
        self,
        *,
        streams: dict[str, int] | None = None,
        consumers: dict[tuple[str, str], tuple[int, int, int]] | None = None,
        account_error: Exception | None = None,
    ) -> None:
        self.streams = streams or {}
        self.consumers = consumers or {}
        self.account_error = account_error

    async def account_info(self) -> object:
        if self.account_error is not None:
            raise self.account_error
        return object()

    async def stream_info(self, name: str) -> Any:
        if name not in self.streams:
            raise NotFoundError(code=404, description="stream not found")
        return SimpleNamespace(
            state=SimpleNamespace(messages=self.streams[name], consumer_count=1, bytes=0),
            config=SimpleNamespace(discard=DiscardPolicy.OLD, max_msgs=-1, max_bytes=-1),
        )

    async def consumer_info(self, stream: str, durable: str) -> Any:
        if (stream, durable) not in self.consumers:
            raise NotFoundError(code=404, description="consumer not found")
        pending, ack_pending, redelivered = self.consumers[stream, durable]
        return SimpleNamespace(
            num_pending=pending, num_ack_pending=ack_pending, num_redelivered=redelivered
        )


class FakeClient:
    """A nats-py client as far as ``check_health`` looks at it."""

    def __init__(self, jsm: FakeJetStream, *, closed: bool = False, connected: bool = True):
        self._jsm = jsm
        self.is_closed = closed
        self.is_connected = connected
        self.connected_url = urlparse("nats://user:secret@127.0.0.1:4222")

    def jsm(self, **options: Any) -> FakeJetStream:
        return self._jsm


def fake(jsm: FakeJetStream, **state: bool) -> Client:
    return cast(Client, FakeClient(jsm, **state))


def healthy_jetstream(pending: int = 0, redelivered: int = 0) -> FakeJetStream:
    return FakeJetStream(
        streams={"TEST_ORDERS": 5, "DLQ_TEST_ORDERS": 0},
        consumers={("TEST_ORDERS", DURABLE): (pending, 0, redelivered)},
    )


STREAMS = ("TEST_ORDERS", "DLQ_TEST_ORDERS")
CONSUMERS = (("TEST_ORDERS", DURABLE),)
EVERY_COMPONENT = [
    "connection",
    "jetstream",
    "stream:TEST_ORDERS",
    "stream:DLQ_TEST_ORDERS",
    f"consumer:TEST_ORDERS/{DURABLE}",
]


async def test_everything_present_and_keeping_up_is_healthy() -> None:
    report = await check_health(
        fake(healthy_jetstream(pending=3)), streams=STREAMS, consumers=CONSUMERS
    )

    assert report.status is HealthStatus.HEALTHY
    assert list(report.components) == EVERY_COMPONENT
    consumer = report.components[f"consumer:TEST_ORDERS/{DURABLE}"]
    assert consumer.data == {"num_pending": 3, "num_ack_pending": 0, "num_redelivered": 0}
    assert report.components["stream:TEST_ORDERS"].data["messages"] == 5


async def test_the_connection_component_never_shows_the_password() -> None:
    report = await check_health(fake(healthy_jetstream()), streams=STREAMS)

    assert report.components["connection"].data == {"server": "127.0.0.1:4222"}
    assert "secret" not in json.dumps(report.to_dict())


@pytest.mark.parametrize(
    ("state", "detail"),
    [
        ({"closed": True}, "connection closed"),
        ({"connected": False}, "disconnected (reconnecting)"),
    ],
)
async def test_a_closed_or_reconnecting_connection_is_unhealthy(
    state: dict[str, bool], detail: str
) -> None:
    report = await check_health(
        fake(healthy_jetstream(), **state), streams=STREAMS, consumers=CONSUMERS
    )

    assert report.status is HealthStatus.UNHEALTHY
    assert report.components["connection"].detail == detail


async def test_no_connection_is_unhealthy_and_still_lists_every_component() -> None:
    report = await check_health(None, streams=STREAMS, consumers=CONSUMERS)

    assert report.status is HealthStatus.UNHEALTHY
    assert list(report.components) == EVERY_COMPONENT
    assert all(c.status is HealthStatus.UNHEALTHY for c in report.components.values())
    assert report.components["stream:TEST_ORDERS"].detail == "not checked: no connection"


@pytest.mark.parametrize(
    "error",
    [nats.errors.NoRespondersError(), nats.errors.TimeoutError(), ConnectionResetError()],
    ids=["no-jetstream", "timeout", "socket"],
)
async def test_jetstream_not_answering_is_unhealthy(error: Exception) -> None:
    jsm = healthy_jetstream()
    jsm.account_error = error

    report = await check_health(fake(jsm), streams=STREAMS, consumers=CONSUMERS)

    assert report.status is HealthStatus.UNHEALTHY
    assert report.components["connection"].status is HealthStatus.HEALTHY
    assert report.components["jetstream"].status is HealthStatus.UNHEALTHY
    assert report.components["jetstream"].detail.startswith("JetStream unreachable")
    assert list(report.components) == EVERY_COMPONENT


async def test_a_missing_stream_is_unhealthy() -> None:
    jsm = healthy_jetstream()
    del jsm.streams["DLQ_TEST_ORDERS"]

    report = await check_health(fake(jsm), streams=STREAMS, consumers=CONSUMERS)

    assert report.status is HealthStatus.UNHEALTHY
    assert report.components["stream:DLQ_TEST_ORDERS"].detail == "missing"
    assert report.components["stream:TEST_ORDERS"].status is HealthStatus.HEALTHY


async def test_a_missing_consumer_is_unhealthy() -> None:
    report = await check_health(
        fake(healthy_jetstream()), streams=STREAMS, consumers=[("TEST_ORDERS", "gone")]
    )

    assert report.status is HealthStatus.UNHEALTHY
    assert report.components["consumer:TEST_ORDERS/gone"].detail.startswith("missing")


async def test_pending_above_max_pending_is_degraded_and_at_it_healthy() -> None:
    at_limit = await check_health(
        fake(healthy_jetstream(pending=10)), streams=STREAMS, consumers=CONSUMERS, max_pending=10
    )
    above = await check_health(
        fake(healthy_jetstream(pending=11)), streams=STREAMS, consumers=CONSUMERS, max_pending=10
    )

    assert at_limit.status is HealthStatus.HEALTHY
    assert above.status is HealthStatus.DEGRADED
    assert above.components[f"consumer:TEST_ORDERS/{DURABLE}"].detail == "11 pending > 10"


async def test_redeliveries_are_degraded() -> None:
    report = await check_health(
        fake(healthy_jetstream(redelivered=2)), streams=STREAMS, consumers=CONSUMERS
    )

    assert report.status is HealthStatus.DEGRADED
    assert report.components[f"consumer:TEST_ORDERS/{DURABLE}"].detail == "2 redelivered"


async def test_unhealthy_outranks_degraded() -> None:
    jsm = healthy_jetstream(pending=5000)
    del jsm.streams["TEST_ORDERS"]

    report = await check_health(fake(jsm), streams=STREAMS, consumers=CONSUMERS)

    assert report.status is HealthStatus.UNHEALTHY


async def test_a_negative_max_pending_is_refused() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        await check_health(None, streams=STREAMS, max_pending=-1)


def test_to_dict_is_json_ready() -> None:
    report = HealthReport.from_components(
        {
            "connection": ComponentHealth(status=HealthStatus.HEALTHY, detail="connected"),
            "consumer:S/D": ComponentHealth(
                status=HealthStatus.DEGRADED, detail="2 redelivered", data={"num_redelivered": 2}
            ),
        }
    )

    assert json.loads(json.dumps(report.to_dict())) == {
        "status": "degraded",
        "components": {
            "connection": {"status": "healthy", "detail": "connected"},
            "consumer:S/D": {"status": "degraded", "detail": "2 redelivered", "num_redelivered": 2},
        },
    }


def test_statuses_are_ordered_by_severity_and_reports_are_frozen() -> None:
    assert [s.severity for s in HealthStatus] == [0, 1, 2]
    assert HealthReport.from_components({}).status is HealthStatus.HEALTHY
    report = HealthReport.from_components({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.status = HealthStatus.UNHEALTHY  # type: ignore[misc]


@pytest.mark.nats
async def test_a_running_app_is_healthy_then_unhealthy_when_the_server_stops(
    own_server: EmbeddedNatsServer,
) -> None:
    server = own_server  # this test stops its server: a private one
    # Given a running app with one consumer, and a client of our own to probe with
    pubsub = NatsPubsub(new_broker(server), env="test", app="orders")

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any]) -> None: ...

    async def quiet(exc: Exception) -> None: ...

    durable = consumer_name("orders", "test.orders.order.created")
    streams = [pubsub.stream, "DLQ_TEST_ORDERS"]
    consumers = [("TEST_ORDERS", durable)]
    nc = await nats.connect(server.url, error_cb=quiet, reconnect_time_wait=0.1)
    try:
        # When checked while everything runs, then once more after the server stops
        async with running(pubsub.broker):
            up = await check_health(nc, streams=streams, consumers=consumers)
            missing = await check_health(nc, streams=["TEST_NOPE"])
        await server.stop()
        await wait_until(lambda: not nc.is_connected, message="the client to notice")
        down = await check_health(nc, streams=streams, consumers=consumers)
    finally:
        await nc.close()

    # Then it was healthy with the real numbers, and unhealthy without a server or stream
    assert up.status is HealthStatus.HEALTHY, up.to_dict()
    assert up.components[f"consumer:TEST_ORDERS/{durable}"].data == {
        "num_pending": 0,
        "num_ack_pending": 0,
        "num_redelivered": 0,
    }
    assert missing.status is HealthStatus.UNHEALTHY
    assert missing.components["stream:TEST_NOPE"].detail == "missing"
    assert down.status is HealthStatus.UNHEALTHY
    assert down.components["connection"].detail == "disconnected (reconnecting)"
