"""The base install: ``opentelemetry-api`` only, without the SDK and what comes with it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow  # a child interpreter (or the docs build): seconds
def test_the_package_imports_and_works_without_the_opentelemetry_sdk() -> None:
    # Modules that come with opentelemetry-sdk, not with the API, made unimportable
    script = textwrap.dedent(
        """
        import asyncio, sys
        for name in ("opentelemetry.sdk", "opentelemetry.semconv"):
            sys.modules[name] = None
        from faststream.nats import NatsBroker, TestNatsBroker
        import faststream_natspubsub.cli, faststream_natspubsub.demo, faststream_natspubsub.testing
        from faststream_natspubsub import NatsPubsub

        async def main():
            broker = NatsBroker()
            pubsub = NatsPubsub(broker, env="dev", app="orders")
            seen = []

            @pubsub.subscriber("order.created")
            async def handle(body: dict) -> None:
                seen.append(body)

            async with TestNatsBroker(broker):
                await pubsub.publish("order.created", {"id": 1})
            assert seen == [{"id": 1}], seen
            print("ok")

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
