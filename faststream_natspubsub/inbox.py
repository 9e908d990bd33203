"""Inbox stores: which event ids a consuming app has already processed.

JetStream delivers at least once, and ``Nats-Msg-Id`` de-duplication only covers re-publishes
inside the stream's duplicate window. The inbox remembers processed event ids for longer, so
a redelivery after a lost ack, a re-publish, or a replay runs the handler's effect once.

A store answers ``claim`` with one of three outcomes; a claim is a lease, so a process that
dies while handling an event does not block it forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from enum import Enum
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from .compat import jetstream_client, kv_subject_prefix
from .errors import TopologyError
from .guarded_kv import GuardedKeyValue
from .kv_pipeline import KvBatch, KvWriter

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
# Claims made ahead for fetched messages, kept until their handlers ask; beyond this many
# the oldest are given up (a claim nobody asks for would hold its event back for a lease).
_AHEAD_LIMIT: Final = 10_000

logger = logging.getLogger("faststream_natspubsub.inbox")
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

    Once bound, creates, marks and deletes go out as pipelined writes (:class:`KvWriter`):
    the claims of a batch, or of messages fetched ahead (:meth:`claim_ahead`), travel in one
    write and are answered in one round trip, and a mark can be sent without waiting for its
    answer (:meth:`mark_started`). Only a claim that finds the key taken needs requests.
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
        self._writer: KvWriter | None = None
        # Claims sent ahead, by key: the answer, and when they were sent (monotonic).
        self._ahead: OrderedDict[str, tuple[KvBatch, int, float]] = OrderedDict()
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
        if self._writer is not None:
            self._writer.close()
        self._writer = KvWriter(
            jetstream_client(js), kv_subject_prefix(kv), watch=watch, bucket=self.bucket
        )
        self._ahead.clear()

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
        ahead = self._ahead.pop(key, None)
        # A claim sent ahead is used while most of its lease is left.
        if ahead is not None and time.monotonic() - ahead[2] < lease / 2:
            return await self._claimed(key, ahead[0], ahead[1], lease)
        if self._writer is not None:
            created = await self._writer.create([key], self._lease_value(lease))
            return await self._claimed(key, created, 0, lease)
        return await self._claim_by_requests(key, lease)

    async def claim_many(self, event_ids: list[str], *, lease: float) -> list[ClaimResult]:
        """:meth:`claim` for many events: their creates go out in one write."""
        if self._writer is None:
            return [await self.claim(event_id, lease=lease) for event_id in event_ids]
        keys = [_key(event_id) for event_id in event_ids]
        created = await self._writer.create(keys, self._lease_value(lease))
        return [await self._claimed(key, created, i, lease) for i, key in enumerate(keys)]

    async def claim_ahead(self, event_ids: Iterable[str], *, lease: float) -> None:
        """Send claims for events whose handlers will ask soon; :meth:`claim` uses them."""
        if self._writer is None:
            return
        keys = [key for key in dict.fromkeys(map(_key, event_ids)) if key not in self._ahead]
        if not keys:
            return
        created = await self._writer.create(keys, self._lease_value(lease))
        now = time.monotonic()
        for index, key in enumerate(keys):
            self._ahead[key] = (created, index, now)
        while len(self._ahead) > _AHEAD_LIMIT:
            key, (batch, index, _) = self._ahead.popitem(last=False)
            await self._give_up([(key, batch, index)])

    async def release_ahead(self, event_ids: Iterable[str]) -> None:
        """Give up the claims sent ahead for these events (their messages went back)."""
        dropped = []
        for key in map(_key, event_ids):
            ahead = self._ahead.pop(key, None)
            if ahead is not None:
                dropped.append((key, ahead[0], ahead[1]))
        await self._give_up(dropped)

    async def _give_up(self, claims: list[tuple[str, KvBatch, int]]) -> None:
        if not claims or self._writer is None:
            return
        batches = {id(batch): batch.done for _, batch, _ in claims}
        pending = [done for done in batches.values() if not done.done()]
        if pending:
            await asyncio.wait(pending, timeout=self._writer.timeout)
        ours = [
            key for key, batch, index in claims if batch.done.done() and batch.error(index) is None
        ]
        if ours:
            deleted = await self._writer.delete(ours)
            await asyncio.wait([deleted.done], timeout=self._writer.timeout)

    async def _claimed(self, key: str, created: KvBatch, index: int, lease: float) -> ClaimResult:
        await created.wait()
        error = created.error(index)
        if isinstance(error, KeyWrongLastSequenceError):  # taken, processed, or deleted before
            return await self._claim_by_requests(key, lease)
        if error is not None:
            raise error
        self._held.add(key)
        return ClaimResult.CLAIMED

    async def _claim_by_requests(self, key: str, lease: float) -> ClaimResult:
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
            return await self._claim_by_requests(key, lease)
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
        stored = await self.mark_started(event_id)
        await stored

    async def mark_started(self, event_id: str) -> asyncio.Future[None]:
        """Send the processed mark; the future completes when the server has stored it (or
        with the error the write failed with)."""
        stored = await self.mark_many([event_id])
        result: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(done: asyncio.Future[list[BaseException | None]]) -> None:
            error = done.result()[0]
            if error is None:
                result.set_result(None)
            else:
                result.set_exception(error)

        stored.add_done_callback(settle)
        return result

    async def mark_many(self, event_ids: list[str]) -> asyncio.Future[list[BaseException | None]]:
        """Send the processed marks of many events in one write; the future gives, once every
        one is answered, the error of each (None: stored)."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[list[BaseException | None]] = loop.create_future()
        if self._kv is None and self._stand_in is not None:
            for event_id in event_ids:
                await self._stand_in.mark_processed(event_id)
            outcome.set_result([None] * len(event_ids))
            return outcome
        keys = [_key(event_id) for event_id in event_ids]
        if self._writer is None:
            errors: list[BaseException | None] = []
            for key in keys:
                try:
                    await self.kv.put(key, _PROCESSED)
                except Exception as exc:  # noqa: BLE001 - reported per key, as the writer does
                    errors.append(exc)
                else:
                    self._held.discard(key)
                    errors.append(None)
            outcome.set_result(errors)
            return outcome
        stored = await self._writer.put(keys, _PROCESSED)

        def settle(_: asyncio.Future[None]) -> None:
            errors = stored.errors()
            # A key stays held here until its mark is stored: until then, another delivery
            # of the event to this process must find it in progress, not a lease left behind.
            self._held.difference_update(k for k, e in zip(keys, errors, strict=True) if e is None)
            outcome.set_result(errors)

        stored.done.add_done_callback(settle)
        return outcome

    async def release(self, event_id: str) -> None:
        if self._kv is None and self._stand_in is not None:
            await self._stand_in.release(event_id)
            return
        key = _key(event_id)
        self._held.discard(key)
        await self.kv.delete(key)  # on the failure path only: a request is fine

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
