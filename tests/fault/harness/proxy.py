"""A TCP proxy on 127.0.0.1 between NATS clients and a server: cut, delay and restore traffic.

A cut drops every open connection and closes the listening socket, so reconnect attempts are
refused (as with a server whose host vanished from the network) until :meth:`TcpProxy.restore`
listens again on the same port. A delay holds every chunk for a while in each direction while
keeping order, as a slow link would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from .nodes import HOST

_CHUNK = 65536


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream_port>``."""

    def __init__(self, upstream_port: int, *, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.delay = 0.0
        self.connections_made = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    @property
    def url(self) -> str:
        """The URL clients use instead of the server's."""
        return f"nats://{HOST}:{self.port}"

    @property
    def cut_off(self) -> bool:
        """True while traffic is cut."""
        return self._server is None

    async def start(self) -> None:
        """Listen (on a free port the first time, then on the same one)."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, HOST, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`restore`."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.abort()
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5.0)

    async def restore(self) -> None:
        """Accept connections again (on the same port) and stop delaying."""
        self.delay = 0.0
        await self.start()

    async def partition(self, seconds: float) -> None:
        """Cut for ``seconds``, then restore (the fixed duration is the scenario itself)."""
        await self.cut()
        try:
            await asyncio.sleep(seconds)
        finally:
            await self.restore()

    async def stop(self) -> None:
        """Close the listener and every connection."""
        await self.cut()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted just before a cut
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.upstream_port), 5.0
            )
        except (OSError, asyncio.TimeoutError):
            client_w.transport.abort()  # the server is down: the client sees a closed socket
            return
        self.connections_made += 1
        link = _Link(self, client_w, server_w)
        self._links.add(link)
        try:
            await asyncio.gather(
                link.pump(client_r, server_w), link.pump(server_r, client_w), return_exceptions=True
            )
        finally:
            link.abort()
            self._links.discard(link)


class _Link:
    """One proxied connection: two writers, aborted together."""

    def __init__(
        self, proxy: TcpProxy, client_w: asyncio.StreamWriter, server_w: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.writers = (client_w, server_w)

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction; with a delay, each chunk leaves ``delay`` after it arrived."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, writer))
        try:
            while data := await reader.read(_CHUNK):
                queue.put_nowait((time.monotonic() + self.proxy.delay, data))
                if sender.done():
                    break
        except OSError:
            pass
        finally:
            if not sender.done():
                queue.put_nowait((0.0, b""))
                with contextlib.suppress(asyncio.TimeoutError, OSError):
                    await asyncio.wait_for(asyncio.shield(sender), self.proxy.delay + 5.0)
            sender.cancel()
            self.abort()

    @staticmethod
    async def _send(
        queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError):  # the other side went away: nothing to deliver to
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
