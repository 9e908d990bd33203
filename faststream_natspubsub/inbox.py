"""Inbox stores: which event ids a consuming app has already processed.

JetStream delivers at least once, and ``Nats-Msg-Id`` de-duplication only covers re-publishes
inside the stream's duplicate window. The inbox remembers processed event ids for longer, so
a redelivery after a lost ack, a re-publish, or a replay runs the handler's effect once.

A store answers ``claim`` with one of three outcomes; a claim is a lease, so a process that
dies while handling an event does not block it forever.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections import OrderedDict
from enum import Enum
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from .errors import TopologyError
from .guarded_kv import GuardedKeyValue

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from .violations import PermissionWatch

__all__ = (
    "DEFAULT_INBOX_TTL",
    "ClaimResult",
    "InboxStore",
    "KvInboxStore",
    "LeaseReporter",
    "MemoryInboxStore",
    "inbox_bucket_name",
    "inbox_key",
)

# How long a processed event id is remembered; a redelivery later than this runs again.
DEFAULT_INBOX_TTL: Final = 7 * 24 * 3600.0
_PROCESSED: Final = b"processed"
_SAFE_KEY = re.compile(r"[-_=a-zA-Z0-9]+(\.[-_=a-zA-Z0-9]+)*")


class ClaimResult(str, Enum):
    """What a store says when a consumer wants to handle an event."""

    CLAIMED = "claimed"
    """Nobody handled it yet; this consumer now holds the lease and runs the handler."""
    PROCESSED = "processed"
    """Already handled: acknowledge and skip."""
    IN_PROGRESS = "in_progress"
    """Another consumer holds an unexpired lease: try again later."""


@runtime_checkable
class InboxStore(Protocol):
    """The three operations the inbox middleware needs; an SQL store fits here too."""

    async def claim(self, event_id: str, *, lease: float) -> ClaimResult:
        """Try to take ``event_id`` for ``lease`` seconds."""
        ...

    async def mark_processed(self, event_id: str) -> None:
        """The handler succeeded: remember the event as processed (until the TTL)."""
        ...

    async def release(self, event_id: str) -> None:
        """The handler failed: give the claim up so a retry can run."""
        ...


@runtime_checkable
class LeaseReporter(Protocol):
    """Optional for a store: when an IN_PROGRESS claim's lease runs out.

    The inbox middleware asks it to hold a redelivery back until a crashed holder's lease has
    expired (one NAK) instead of polling (a NAK, and a used-up delivery, every few seconds).
    """

    async def lease_remaining(self, event_id: str) -> float | None:
        """Seconds until the current claim of ``event_id`` expires; None if it is not claimed."""
        ...


class MemoryInboxStore:
    """A bounded LRU of event ids with a TTL; per process, lost on restart.

    An entry is a 16-byte digest of the key and one float: about 200 bytes with the
    ordered dict around it (100,000 ids measured at 19 MB), whatever the key's length.
    """

    def __init__(self, *, max_entries: int = 100_000, ttl: float = DEFAULT_INBOX_TTL) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.ttl = ttl
        # digest of the key -> when it expires on the monotonic clock; negative while a
        # claim is in progress, positive once processed (one float: the smallest entry).
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, event_id: str, *, lease: float) -> ClaimResult:
        now = time.monotonic()
        key = _digest(event_id)
        entry = self._entries.get(key)
        if entry is not None and abs(entry) > now:
            self._entries.move_to_end(key)
            return ClaimResult.PROCESSED if entry > 0 else ClaimResult.IN_PROGRESS
        self._store(key, -(now + lease))
        return ClaimResult.CLAIMED

    async def mark_processed(self, event_id: str) -> None:
        self._store(_digest(event_id), time.monotonic() + self.ttl)

    async def release(self, event_id: str) -> None:
        self._entries.pop(_digest(event_id), None)

    async def is_processed(self, event_id: str) -> bool:
        entry = self._entries.get(_digest(event_id))
        return entry is not None and entry > time.monotonic()

    async def lease_remaining(self, event_id: str) -> float | None:
        entry = self._entries.get(_digest(event_id))
        if entry is None or entry > 0:
            return None
        return max(-entry - time.monotonic(), 0.0)

    def _store(self, key: bytes, expires_at: float) -> None:
        self._entries[key] = expires_at
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _digest(key: str) -> bytes:
    """A 128-bit digest of a key: a fixed, small size whatever the key's length."""
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


def inbox_key(prefix: str, subject: str, event_id: str) -> str:
    """The inbox key of ``event_id`` delivered on ``subject``: ``<prefix><topic>.<event_id>``.

    ``prefix`` is ``"<durable>."`` (or empty). The topic is taken from the subject, never
    from the envelope, with its dots written as ``=`` so the key reads unambiguously: a
    durable name has no dot, a topic has no ``=``, and what follows the second dot is the
    event id. One event id on two topics (a wildcard subscriber) is two events. A topic
    that holds an ``=`` (another app's subject) is written as ``=`` and a digest.
    """
    parts = subject.split(".", 2)
    topic = parts[2] if len(parts) == 3 else subject
    if "=" in topic:
        written = "=" + hashlib.sha256(topic.encode()).hexdigest()[:32]
    else:
        written = topic.replace(".", "=")
    return f"{prefix}{written}.{event_id}"


def inbox_bucket_name(env: str, app: str) -> str:
    """The KV bucket of ``app``'s inbox: ``natspubsub_inbox_<env>_<app>``."""
    return f"natspubsub_inbox_{env}_{app}"


class KvInboxStore:
    """Processed event ids in a NATS KV bucket: shared by every process, kept across restarts.

    Claims use KV's create (only if absent) and update-with-revision (compare and swap), so two
    processes can never both claim one event. The bucket's TTL forgets old entries.
    """

    def __init__(self, *, bucket: str, ttl: float = DEFAULT_INBOX_TTL, replicas: int = 1) -> None:
        self.bucket = bucket
        self.ttl = ttl
        self.replicas = replicas
        # Identifies this process's leases in the bucket (useful when inspecting it).
        self.owner = uuid.uuid4().hex[:12]
        # Keys whose claim a handler in this process holds right now. A lease of this owner
        # that is not in here was left behind by a failed release, so this process may take
        # it over at once instead of waiting for it to expire.
        self._held: set[str] = set()
        self._kv: KeyValue | GuardedKeyValue | None = None
        # Used instead of the bucket in memory tests (TestNatsBroker), where there is none.
        self._stand_in: MemoryInboxStore | None = None

    async def bind(
        self, js: JetStreamContext, *, create: bool = True, watch: PermissionWatch | None = None
    ) -> None:
        """Open the bucket, creating it on first use (``create=False``: it must exist).

        With ``watch``, an operation the server refuses for lack of permission fails at once.
        """
        try:
            kv = await js.key_value(self.bucket)
        except NotFoundError:
            if not create:
                raise TopologyError(
                    f'the inbox\'s KV bucket {self.bucket} is missing (topology="verify" '
                    "creates nothing)"
                ) from None
            kv = await js.create_key_value(
                bucket=self.bucket, ttl=self.ttl, history=1, replicas=self.replicas
            )
        self._kv = kv if watch is None else GuardedKeyValue(kv, watch, self.bucket)

    @property
    def bound(self) -> bool:
        """Whether :meth:`bind` has opened the bucket."""
        return self._kv is not None

    def stand_in_for_tests(self) -> None:
        """Keep the ids in memory until bound: for ``TestNatsBroker``, which has no KV.

        The inbox middleware calls this when an unbound store meets an in-memory message.
        """
        if self._stand_in is None:
            self._stand_in = MemoryInboxStore(ttl=self.ttl)

    @property
    def kv(self) -> KeyValue | GuardedKeyValue:
        if self._kv is None:
            raise RuntimeError("KvInboxStore is not bound: start the broker first")
        return self._kv

    async def claim(self, event_id: str, *, lease: float) -> ClaimResult:
        if self._kv is None and self._stand_in is not None:
            return await self._stand_in.claim(event_id, lease=lease)
        key = _key(event_id)
        value = self._lease_value(lease)
        try:
            await self.kv.create(key, value)
        except KeyWrongLastSequenceError:
            pass
        else:
            self._held.add(key)
            return ClaimResult.CLAIMED
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:  # released in between: claim it again
            return await self.claim(event_id, lease=lease)
        current = entry.value or b""
        if current == _PROCESSED:
            return ClaimResult.PROCESSED
        if _lease_expiry(current) > time.time() and not self._left_behind(key, current):
            return ClaimResult.IN_PROGRESS
        try:  # the holder's lease ran out (it crashed): take over, unless someone was faster
            await self.kv.update(key, value, last=entry.revision)
        except KeyWrongLastSequenceError:
            return ClaimResult.IN_PROGRESS
        self._held.add(key)
        return ClaimResult.CLAIMED

    async def mark_processed(self, event_id: str) -> None:
        if self._kv is None and self._stand_in is not None:
            await self._stand_in.mark_processed(event_id)
            return
        key = _key(event_id)
        await self.kv.put(key, _PROCESSED)
        self._held.discard(key)

    async def release(self, event_id: str) -> None:
        if self._kv is None and self._stand_in is not None:
            await self._stand_in.release(event_id)
            return
        key = _key(event_id)
        self._held.discard(key)
        await self.kv.delete(key)

    async def is_processed(self, event_id: str) -> bool:
        if self._kv is None and self._stand_in is not None:
            return await self._stand_in.is_processed(event_id)
        try:
            entry = await self.kv.get(_key(event_id))
        except KeyNotFoundError:
            return False
        return entry.value == _PROCESSED

    async def lease_remaining(self, event_id: str) -> float | None:
        if self._kv is None and self._stand_in is not None:
            return await self._stand_in.lease_remaining(event_id)
        try:
            entry = await self.kv.get(_key(event_id))
        except KeyNotFoundError:
            return None
        expiry = _lease_expiry(entry.value or b"")
        return None if expiry == 0.0 else max(expiry - time.time(), 0.0)

    def _left_behind(self, key: str, value: bytes) -> bool:
        """A lease of this process that no handler here holds any more."""
        parts = value.split()
        return len(parts) >= 3 and parts[2].decode() == self.owner and key not in self._held

    def _lease_value(self, lease: float) -> bytes:
        return f"claimed {time.time() + lease:.3f} {self.owner}".encode()


def _key(event_id: str) -> str:
    """KV keys allow few characters; other ids are hashed (stable across processes)."""
    if _SAFE_KEY.fullmatch(event_id) and len(event_id) < 200:
        return event_id
    return "sha256-" + hashlib.sha256(event_id.encode()).hexdigest()


def _lease_expiry(value: bytes) -> float:
    parts = value.split()
    try:
        return float(parts[1]) if len(parts) >= 2 and parts[0] == b"claimed" else 0.0
    except ValueError:
        return 0.0
