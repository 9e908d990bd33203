"""Health: ``pubsub.health()`` in code, and an HTTP probe mounted in the FastStream app.

Run it: ``python examples/e11_health.py`` (starts a throw-away nats-server).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker

from faststream_natspubsub import HealthReport, HealthStatus, NatsPubsub
from faststream_natspubsub.testing import EmbeddedNatsServer


# --8<-- [start:app]
def create_app(url: str) -> tuple[AsgiFastStream, NatsPubsub]:
    broker = NatsBroker(url, logger=None)
    pubsub = NatsPubsub(broker, env="dev", app="orders")

    @pubsub.subscriber("order.created")
    async def on_created(order: dict[str, Any]) -> None: ...

    # GET /health: the report as JSON; 200 when healthy or degraded, 503 when unhealthy.
    app = AsgiFastStream(broker, asgi_routes=[("/health", pubsub.health_route(max_pending=500))])
    return app, pubsub


# --8<-- [end:app]


async def probe(app: AsgiFastStream, path: str = "/health") -> tuple[int, dict[str, Any]]:
    """One GET through the ASGI app, as a load balancer would send it."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


async def main(url: str) -> tuple[HealthReport, tuple[int, dict[str, Any]]]:
    app, pubsub = create_app(url)
    await pubsub.broker.start()
    try:
        # --8<-- [start:code]
        report = await pubsub.health()
        if report.status is not HealthStatus.HEALTHY:
            for name, component in report.components.items():
                print(f"{name}: {component.status.value} {component.detail}")
        # --8<-- [end:code]
        return report, await probe(app)
    finally:
        await pubsub.broker.stop()


if __name__ == "__main__":

    async def _run() -> None:
        async with EmbeddedNatsServer() as server:
            report, (status, body) = await main(server.url)
        print(report.status.value, status, json.dumps(body, indent=2))

    asyncio.run(_run())
