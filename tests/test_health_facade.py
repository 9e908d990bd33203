"""NatsPubsub.health() and its ASGI route against a server that goes away and comes back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from faststream.asgi import AsgiFastStream
from support import new_broker, running, wait_until

from faststream_natspubsub import NatsPubsub
from faststream_natspubsub.health import HealthStatus
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats


def build(server: EmbeddedNatsServer) -> NatsPubsub:
    broker = new_broker(server, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    pubsub = NatsPubsub(broker, env="test", app="orders")

    @pubsub.subscriber("order.created")
    async def handle(body: dict[str, Any]) -> None: ...

    return pubsub


async def status_is(pubsub: NatsPubsub, expected: HealthStatus) -> bool:
    return (await pubsub.health()).status is expected


async def test_health_is_unhealthy_while_the_server_is_down_and_healthy_after(
    own_server: EmbeddedNatsServer,
) -> None:
    server = own_server  # this test stops its server: a private one
    pubsub = build(server)
    async with running(pubsub.broker):
        report = await pubsub.health()
        assert report.status is HealthStatus.HEALTHY
        assert {"connection", "jetstream", "stream:TEST_ORDERS", "stream:DLQ_TEST_ORDERS"} <= set(
            report.components
        )
        await server.stop(remove_store=False)
        await wait_until(lambda: status_is(pubsub, HealthStatus.UNHEALTHY), message="unhealthy")
        await server.start()
        await wait_until(
            lambda: status_is(pubsub, HealthStatus.HEALTHY), timeout=20, message="healthy again"
        )


async def test_health_before_start_is_unhealthy() -> None:
    from faststream.nats import NatsBroker

    pubsub = NatsPubsub(NatsBroker(), env="test", app="orders")
    report = await pubsub.health()
    assert report.status is HealthStatus.UNHEALTHY
    assert report.components["connection"].detail == "no connection"


async def call_asgi(app: Any, path: str) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": []}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


async def test_the_asgi_health_route_answers_200_and_then_503(
    own_server: EmbeddedNatsServer,
) -> None:
    server = own_server  # this test stops its server: a private one
    pubsub = build(server)
    app = AsgiFastStream(pubsub.broker, asgi_routes=[("/health", pubsub.health_route())])
    async with running(pubsub.broker):
        status, body = await call_asgi(app, "/health")
        assert (status, body["status"]) == (200, "healthy")
        await server.stop(remove_store=False)
        await wait_until(lambda: status_is(pubsub, HealthStatus.UNHEALTHY), message="unhealthy")
        status, body = await call_asgi(app, "/health")
        assert (status, body["status"]) == (503, "unhealthy")
        await server.start()
        await wait_until(
            lambda: status_is(pubsub, HealthStatus.HEALTHY), timeout=20, message="healthy again"
        )
