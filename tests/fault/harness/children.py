"""Any of the ``apps/`` scripts as a child process: start, read its announcements, SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

APPS = Path(__file__).resolve().parent.parent / "apps"


class Child:
    """``apps/<script>`` with ``args``; stderr goes to ``log``, stdout lines are read."""

    def __init__(self, script: str, args: Sequence[str], log: Path) -> None:
        self.script = APPS / script
        self.args = list(args)
        self.log = log
        self.kills = 0
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, *, until: str = "ready", timeout: float = 60.0) -> list[str]:
        """Start it and return the words of its first stdout line starting with ``until``."""
        with self.log.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(self.script),
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        return await self.read_line(until, timeout=timeout)

    async def read_line(self, prefix: str, *, timeout: float = 60.0) -> list[str]:
        """The words of the next stdout line starting with ``prefix``."""
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            try:
                line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
            except asyncio.TimeoutError:
                line = b""
            if not line:
                await self.kill()
                tail = self.log.read_bytes()[-3000:].decode(errors="replace")
                raise RuntimeError(f"{self.script.name} said no {prefix!r} line:\n{tail}")
            words = line.decode().split()
            if words and words[0] == prefix:
                return words[1:]

    async def kill(self) -> None:
        """SIGKILL and reap: no code of it runs any more."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        self.kills += 1
        await proc.wait()

    async def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL after 30 s."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
