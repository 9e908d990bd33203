"""Consumer apps in subprocesses: start, SIGKILL, SIGTERM, and read the effects they recorded."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "apps" / "effects_consumer.py"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One handler start, as the consumer logged it."""

    event_id: str
    deliveries: int
    at: float


class ConsumerProcess:
    """``apps/effects_consumer.py`` as a child process writing to files under ``work_dir``.

    Restarting after a kill appends to the same files, so a test reads every effect of every
    incarnation of this consumer.
    """

    def __init__(
        self,
        servers: Sequence[str],
        work_dir: Path,
        name: str,
        *,
        inbox: str = "kv",
        ack_wait: float = 2.0,
        workers: int = 4,
        handle_seconds: float = 0.0,
        graceful_timeout: float = 10.0,
        replicas: int = 1,
        max_attempts: int = 5,
        backoff: float = 0.2,
        app: str = "ledger",
        database: Sequence[str] = (),
        effects_reader: Callable[[], list[str]] | None = None,
        order_by: str = "",
    ) -> None:
        self.servers = list(servers)
        self.name = name
        self.effects_path = work_dir / f"{name}.effects"
        self.started_path = work_dir / f"{name}.started"
        self.marks_path = work_dir / f"{name}.marks"
        self.log_path = work_dir / f"{name}.log"
        self.written_path = work_dir / f"{name}.written"
        # SQL inbox consumers keep their effects in the database: read there.
        self.effects_reader = effects_reader
        self.options = [
            f"--inbox={inbox}",
            f"--ack-wait={ack_wait}",
            f"--workers={workers}",
            f"--handle-seconds={handle_seconds}",
            f"--graceful-timeout={graceful_timeout}",
            f"--replicas={replicas}",
            f"--max-attempts={max_attempts}",
            f"--backoff={backoff}",
            f"--app={app}",
            f"--written={self.written_path}",
            *database,
            f"--order-by={order_by}",
        ]
        self.starts = 0
        # Unix times of the SIGKILLs this consumer received.
        self.kills: list[float] = []
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        """Whether the child is alive."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self, *, timeout: float = 60.0) -> None:
        """Start the child and wait for its ``ready`` line."""
        if self.running:
            raise RuntimeError(f"consumer {self.name} is already running")
        with self.log_path.open("ab") as log:
            self._proc = proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(APP),
                f"--servers={','.join(self.servers)}",
                f"--effects={self.effects_path}",
                f"--started={self.started_path}",
                f"--marks={self.marks_path}",
                *self.options,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        self.starts += 1
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            line = b""
        if line.strip() != b"ready":
            await self.kill()
            raise RuntimeError(f"consumer {self.name} did not start:\n{self.log_tail()}")

    async def kill(self) -> None:
        """SIGKILL the child and reap it: no code of it runs any more."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        self.kills.append(time.time())
        await proc.wait()

    async def terminate(self, *, timeout: float = 30.0) -> int:
        """SIGTERM the child and wait (SIGKILL after ``timeout``); returns its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            raise RuntimeError(f"consumer {self.name} is not running")
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return proc.returncode

    async def stop(self) -> None:
        """Stop the child if it runs (SIGTERM, then SIGKILL)."""
        if self.running:
            await self.terminate(timeout=15.0)

    def effects(self) -> list[str]:
        """Event ids whose effect this consumer performed, in order."""
        if self.effects_reader is not None:
            return self.effects_reader()
        if not self.effects_path.exists():
            return []
        return self.effects_path.read_text().split()

    def written(self) -> list[str]:
        """SQL inbox: event ids whose effect was written (committed or not), in order."""
        if not self.written_path.exists():
            return []
        return [line.split()[0] for line in self.written_path.read_text().splitlines()]

    def deliveries(self) -> list[Delivery]:
        """Every handler start this consumer logged."""
        if not self.started_path.exists():
            return []
        found = []
        for line in self.started_path.read_text().splitlines():
            event_id, deliveries, at = line.split()
            found.append(Delivery(event_id, int(deliveries), float(at)))
        return found

    def marked(self) -> set[str]:
        """Event ids whose processed mark this consumer wrote to the inbox (KV inbox only)."""
        if not self.marks_path.exists():
            return set()
        # Each line is "<durable>.<event_id> <time>": the key the inbox marked.
        lines = self.marks_path.read_text().splitlines()
        return {line.split()[0].rsplit(".", 1)[-1] for line in lines}

    def log_tail(self, size: int = 4000) -> str:
        """The end of the child's stderr."""
        if not self.log_path.exists():
            return "(no output)"
        return self.log_path.read_bytes()[-size:].decode(errors="replace")


def effect_mark_window(consumers: Sequence[ConsumerProcess], event_ids: set[str]) -> set[str]:
    """The events of ``event_ids`` handled twice because a consumer was SIGKILLed between
    the handler's effect and the inbox's processed mark: the limit the inbox documents.

    Each consumer logs every processed mark it wrote (``--marks``). The signature, all of it
    required: a consumer wrote the effect, never wrote the event's processed mark, and was
    SIGKILLed after that delivery started; the other effect came from a delivery that
    started after the kill.
    """
    explained: set[str] = set()
    starts: dict[str, list[tuple[float, ConsumerProcess]]] = {}
    for consumer in consumers:
        for delivery in consumer.deliveries():
            if delivery.event_id in event_ids:
                starts.setdefault(delivery.event_id, []).append((delivery.at, consumer))
    marked = {id(consumer): consumer.marked() for consumer in consumers}
    for event_id, seen in starts.items():
        seen.sort(key=lambda item: item[0])
        for at, consumer in seen:
            if event_id not in consumer.effects() or event_id in marked[id(consumer)]:
                continue
            kill = min((k for k in consumer.kills if k >= at), default=None)
            if kill is not None and any(later >= kill for later, _ in seen):
                explained.add(event_id)
                break
    return explained


async def stop_all(consumers: Sequence[ConsumerProcess]) -> None:
    """Stop every consumer; used in ``finally`` blocks."""
    await asyncio.gather(*(c.stop() for c in consumers), return_exceptions=True)
