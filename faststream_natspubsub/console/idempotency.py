"""Idempotency keys: an action form is carried out once, however often it is sent.

Every action form holds a random key. The first request with a key claims it and runs the
action; a second one (a double click, a browser or proxy retry) finds the claim and is shown
the first one's progress or result instead. In one process the memory store suffices; a
console served by several processes shares claims through a NATS KV bucket, whose ``create``
is atomic across clients.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = (
    "DEFAULT_KEY_TTL",
    "IdempotencyStore",
    "KvIdempotencyStore",
    "MemoryIdempotencyStore",
    "console_bucket_name",
)

# How long a key is remembered: far longer than any browser or proxy retries a request.
DEFAULT_KEY_TTL: Final = 24 * 3600.0
# Keys kept by the memory store at most (oldest forgotten first).
DEFAULT_MAX_KEYS: Final = 10_000


@runtime_checkable
class IdempotencyStore(Protocol):
    """Where claimed keys and what became of them are kept."""

    async def claim(self, key: str, value: bytes) -> bytes | None:
        """Store ``value`` under ``key`` unless the key exists.

        Returns ``None`` when this call claimed the key, else the value stored first.
        """
        ...

    async def update(self, key: str, value: bytes) -> None:
        """Replace the value of a claimed key (the action's progress or result)."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None``."""
        ...


class MemoryIdempotencyStore:
    """Claims in this process only; bounded, keys expire after ``ttl`` seconds."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_KEY_TTL,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self._clock = clock
        self._values: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def claim(self, key: str, value: bytes) -> bytes | None:
        # No await before the check-and-set: two requests in one event loop cannot interleave.
        self._expire()
        found = self._values.get(key)
        if found is not None:
            return found[1]
        self._values[key] = (self._clock() + self.ttl, value)
        while len(self._values) > self.max_keys:
            self._values.popitem(last=False)
        return None

    async def update(self, key: str, value: bytes) -> None:
        found = self._values.get(key)
        expires = found[0] if found else self._clock() + self.ttl
        self._values[key] = (expires, value)

    async def get(self, key: str) -> bytes | None:
        self._expire()
        found = self._values.get(key)
        return found[1] if found else None

    def _expire(self) -> None:
        now = self._clock()
        while self._values:
            key, (expires, _) = next(iter(self._values.items()))
            if expires > now:
                break
            del self._values[key]


def console_bucket_name(env: str, app: str) -> str:
    """The KV bucket of the console of ``app`` in ``env``."""
    return f"natspubsub_console_{env}_{app}"


class KvIdempotencyStore:
    """Claims shared by every console process through a NATS KV bucket (created if missing).

    ``bind(js)`` must be called before use; the console does it when it starts serving.
    """

    def __init__(self, bucket: str, *, ttl: float = DEFAULT_KEY_TTL, replicas: int = 1) -> None:
        self.bucket = bucket
        self.ttl = ttl
        self.replicas = replicas
        self._kv: KeyValue | None = None

    async def bind(self, js: JetStreamContext) -> None:
        """Open the bucket, creating it on first use."""
        try:
            self._kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=self.bucket,
                    description="natspubsub console: idempotency keys of actions",
                    history=1,
                    ttl=self.ttl,
                    replicas=self.replicas,
                )
            )

    @property
    def bound(self) -> bool:
        """Whether :meth:`bind` has run."""
        return self._kv is not None

    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("KvIdempotencyStore.bind(js) was not called")
        return self._kv

    async def claim(self, key: str, value: bytes) -> bytes | None:
        kv = self._bucket()
        try:
            await kv.create(key, value)
        except KeyWrongLastSequenceError:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:  # expired in between: still not ours to run again
                return b""
            return entry.value or b""
        return None

    async def update(self, key: str, value: bytes) -> None:
        await self._bucket().put(key, value)

    async def get(self, key: str) -> bytes | None:
        try:
            entry = await self._bucket().get(key)
        except KeyNotFoundError:
            return None
        return entry.value
