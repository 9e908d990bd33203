"""nats-server processes for fault tests: single nodes and a JetStream cluster on loopback.

``EmbeddedNatsServer`` covers the single server (kill, restart, fixed port and store). A
cluster needs what it does not expose: a fixed ``server_name`` (JetStream's Raft groups know
their peers by name, so a restarted node must come back under the same one), a cluster port
and routes. :class:`NatsNode` runs the binary from a config file that says all of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from faststream_natspubsub.testing import EmbeddedNatsServer
from faststream_natspubsub.testing.server import _read_info, find_nats_server_binary

HOST = "127.0.0.1"
# fsync every write: without it the file store syncs every 2 min and a SIGKILL (or a power
# cut) may lose acknowledged messages (Jepsen, NATS 2.12.1).
SYNC_ALWAYS = "jetstream { sync_interval: always }"
_CLUSTER_NAME = "natspubsub-fault"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held together while picked)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def sync_always_server(**kwargs: Any) -> EmbeddedNatsServer:
    """A single JetStream server that fsyncs every write, so SIGKILL loses no acked message."""
    return EmbeddedNatsServer(config=SYNC_ALWAYS, **kwargs)


def pause(pid: int | None) -> None:
    """SIGSTOP a process: it keeps its sockets open but answers nothing (a hung server)."""
    if pid is not None:
        os.kill(pid, signal.SIGSTOP)


def resume(pid: int | None) -> None:
    """SIGCONT a process stopped by :func:`pause`."""
    if pid is not None:
        os.kill(pid, signal.SIGCONT)


async def _server_name(port: int) -> str | None:
    """The ``server_name`` in the INFO line of the server on ``port``."""
    try:
        name = (await _read_info(port)).get("server_name")
    except ValueError:  # not a NATS INFO line
        return None
    return name if isinstance(name, str) else None


class NatsNode:
    """One clustered ``nats-server`` with a fixed name, client port, cluster port and store."""

    def __init__(
        self,
        *,
        name: str,
        port: int,
        cluster_port: int,
        route_ports: Sequence[int],
        work_dir: Path,
        sync_always: bool = True,
    ) -> None:
        self.name = name
        self.port = port
        self.cluster_port = cluster_port
        self.work_dir = work_dir
        self.store_dir = work_dir / "store"
        self.log_path = work_dir / "nats-server.log"
        self.config_path = work_dir / "nats-server.conf"
        routes = ", ".join(f"nats-route://{HOST}:{p}" for p in route_ports)
        sync = ", sync_interval: always" if sync_always else ""
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f"server_name: {name}\n"
            f"listen: {HOST}:{port}\n"
            f'jetstream {{ store_dir: "{self.store_dir}" {sync} }}\n'
            f"cluster {{ name: {_CLUSTER_NAME}, listen: {HOST}:{cluster_port}, "
            f"routes: [{routes}] }}\n"
        )
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self._proc.pid if self._proc is not None and self.running else None

    async def start(self, *, timeout: float = 15.0) -> None:
        """Start the process and wait until it serves clients under its own name."""
        if self.running:
            raise RuntimeError(f"node {self.name} is already running")
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                find_nats_server_binary(),
                "-c",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"node {self.name} exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError, asyncio.TimeoutError):
                if await asyncio.wait_for(_server_name(self.port), 1.0) == self.name:
                    return
            await asyncio.sleep(0.05)
        await self.kill()
        raise RuntimeError(f"node {self.name} not ready in {timeout}s:\n{self.log_tail()}")

    async def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM (SIGKILL after ``timeout``) and reap; the store is kept."""
        await self._end(signal.SIGTERM, timeout)

    async def kill(self) -> None:
        """SIGKILL and reap, as a crash would; the store is kept."""
        await self._end(signal.SIGKILL, 10.0)

    def pause(self) -> None:
        """SIGSTOP the node."""
        pause(self.pid)

    def resume(self) -> None:
        """SIGCONT the node."""
        resume(self.pid)

    async def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def log_tail(self, size: int = 4000) -> str:
        """The end of the node's output."""
        if not self.log_path.exists():
            return "(no output)"
        return self.log_path.read_bytes()[-size:].decode(errors="replace")


class NatsCluster:
    """Three (or more) JetStream nodes routed to each other on 127.0.0.1.

    ``async with NatsCluster() as cluster:`` starts every node and waits until JetStream
    answers; leaving stops every node and removes the stores.
    """

    def __init__(self, size: int = 3, *, sync_always: bool = True) -> None:
        self.size = size
        self.sync_always = sync_always
        self.nodes: list[NatsNode] = []
        self._dir: Path | None = None

    @property
    def urls(self) -> list[str]:
        """Every node's client URL."""
        return [node.url for node in self.nodes]

    def node_named(self, name: str | None) -> NatsNode:
        """The node whose ``server_name`` is ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise LookupError(f"no node named {name!r}")

    async def __aenter__(self) -> NatsCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every node and wait for a JetStream meta leader."""
        self._dir = Path(tempfile.mkdtemp(prefix="natspubsub-cluster-"))
        ports = free_ports(2 * self.size)
        client_ports, cluster_ports = ports[: self.size], ports[self.size :]
        self.nodes = [
            NatsNode(
                name=f"n{index}",
                port=client_ports[index],
                cluster_port=cluster_ports[index],
                route_ports=cluster_ports,
                work_dir=self._dir / f"n{index}",
                sync_always=self.sync_always,
            )
            for index in range(self.size)
        ]
        try:
            await asyncio.gather(*(node.start() for node in self.nodes))
            await self.wait_jetstream()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every node and delete the stores."""
        await asyncio.gather(*(node.stop() for node in self.nodes), return_exceptions=True)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def connect(self, **kwargs: Any) -> Client:
        """A nats-py client that knows every node."""
        kwargs.setdefault("max_reconnect_attempts", -1)
        kwargs.setdefault("reconnect_time_wait", 0.2)
        return await nats.connect(servers=self.urls, **kwargs)

    async def wait_jetstream(self, *, timeout: float = 30.0) -> None:
        """Wait until every running node answers JetStream API requests."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if not node.running:
                continue
            nc = await nats.connect(node.url, allow_reconnect=False)
            try:
                while True:
                    try:
                        await nc.jetstream().account_info()
                        break
                    except (NatsError, JetStreamError, asyncio.TimeoutError):
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.1)
            finally:
                await nc.close()

    async def stream_leader(self, nc: Client, stream: str, *, timeout: float = 30.0) -> NatsNode:
        """The node leading ``stream`` (waits while an election runs)."""
        return await self._leader(nc, f"$JS.API.STREAM.INFO.{stream}", timeout)

    async def consumer_leader(
        self, nc: Client, stream: str, durable: str, *, timeout: float = 30.0
    ) -> NatsNode:
        """The node leading consumer ``durable`` of ``stream``."""
        return await self._leader(nc, f"$JS.API.CONSUMER.INFO.{stream}.{durable}", timeout)

    async def step_down_stream(self, nc: Client, stream: str) -> tuple[NatsNode, NatsNode]:
        """Make the stream leader step down; returns (old leader, new leader)."""
        old = await self.stream_leader(nc, stream)
        await _api(nc, f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}")
        new = await self._new_leader(nc, f"$JS.API.STREAM.INFO.{stream}", old)
        return old, new

    async def step_down_consumer(
        self, nc: Client, stream: str, durable: str
    ) -> tuple[NatsNode, NatsNode]:
        """Make the consumer leader step down; returns (old leader, new leader)."""
        info_subject = f"$JS.API.CONSUMER.INFO.{stream}.{durable}"
        old = await self._leader(nc, info_subject, 30.0)
        await _api(nc, f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{durable}")
        new = await self._new_leader(nc, info_subject, old)
        return old, new

    async def _new_leader(self, nc: Client, info_subject: str, old: NatsNode) -> NatsNode:
        deadline = time.monotonic() + 30.0
        while True:
            leader = await self._leader(nc, info_subject, 30.0)
            if leader is not old:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"{info_subject}: {old.name} is still the leader")
            await asyncio.sleep(0.05)

    async def _leader(self, nc: Client, info_subject: str, timeout: float) -> NatsNode:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                last = await _api(nc, info_subject, check=False)
                name = (last.get("cluster") or {}).get("leader")
                if name:
                    return self.node_named(name)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no leader from {info_subject} within {timeout}s (last: {last})")


async def _api(nc: Client, subject: str, *, check: bool = True) -> dict[str, Any]:
    """A JetStream API request; with ``check`` an error answer raises ``RuntimeError``."""
    reply = await nc.request(subject, b"", timeout=5.0)
    data: dict[str, Any] = json.loads(reply.data or b"{}")
    if check and ("error" in data or data.get("success") is False):
        raise RuntimeError(f"{subject} failed: {data}")
    return data
