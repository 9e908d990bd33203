"""``natspubsub console``: the console served alone, with its own connection."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import httpx
import pytest
from console_support import CONSOLE_TOKEN, connected, free_port, seed_records
from support import wait_until
from typer.testing import CliRunner

from faststream_natspubsub.cli import app
from faststream_natspubsub.testing import EmbeddedNatsServer


def test_the_command_documents_its_options() -> None:
    result = CliRunner().invoke(app, ["console", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--actions",
        "--read-only",
        "--console-token",
        "--port",
        "--host",
        "--idempotency",
    ):
        assert option in result.output


def test_actions_without_a_token_are_refused_before_serving() -> None:
    result = CliRunner().invoke(
        app, ["console", "--env", "dev", "--app", "billing", "--actions"], env={}
    )
    assert result.exit_code == 2
    assert "needs token= or auth=" in result.output


def test_a_short_token_is_refused() -> None:
    result = CliRunner().invoke(
        app,
        ["console", "--env", "dev", "--app", "billing", "--console-token", "short"],
    )
    assert result.exit_code == 2
    assert "at least 16 characters" in result.output


@pytest.mark.nats
@pytest.mark.slow
async def test_the_console_serves_alone_until_interrupted(server: EmbeddedNatsServer) -> None:
    async with connected(server.url) as nc:
        await seed_records(nc, "dev", "billing", 5)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "faststream_natspubsub.cli",
        "console",
        "--servers",
        server.url,
        "--env",
        "dev",
        "--app",
        "billing",
        "--port",
        str(port),
        "--actions",
        env={**os.environ, "NATSPUBSUB_CONSOLE_TOKEN": CONSOLE_TOKEN},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        headers = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers
        ) as client:

            async def answers() -> bool:
                try:
                    return (await client.get("/", params={"view": "dlq"})).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(answers, timeout=30, message="the console to answer")
            page = await client.get("/", params={"view": "dlq"})
            assert "5 records in the DLQ" in page.text
            assert "actions enabled" in page.text
            assert (await client.get("/", headers={"Authorization": ""})).status_code == 303
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
    assert process.returncode == 0, stderr.decode()
    assert b"natspubsub console of dev/billing" in stderr
    assert b"natspubsub console stopped" in stderr


def test_without_the_console_extra_the_command_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from faststream_natspubsub.cli import main\n"
        "sys.argv = ['natspubsub', 'console', '--env', 'dev', '--app', 'billing']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'faststream-natspubsub[console]'" in done.stderr


def test_the_console_mounts_with_the_base_install_only() -> None:
    # uvicorn, httpx and Playwright are dev or extra dependencies: made unimportable here
    script = textwrap.dedent(
        """
        import asyncio, sys
        for name in ("uvicorn", "httpx", "playwright"):
            sys.modules[name] = None
        from faststream.asgi import AsgiFastStream
        from faststream.nats import NatsBroker
        from faststream_natspubsub import NatsPubsub

        pubsub = NatsPubsub(NatsBroker(), env="dev", app="orders")
        console = pubsub.console()
        app = AsgiFastStream(pubsub.broker, asgi_routes=[("/natspubsub", console)])
        sent = []

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/natspubsub",
                 "query_string": b"asset=console.css", "headers": []}
        asyncio.run(app(scope, receive, send))
        assert sent[0]["status"] == 200, sent
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
