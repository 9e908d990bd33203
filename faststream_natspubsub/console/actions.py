"""Replaying and purging dead letters from the console, as jobs that run once per key.

An action is one record or the filtered set as the operator saw it (records stored up to the
sequence the page showed: newer ones are left alone). Each runs as a background job whose
progress the browser follows; its idempotency key is claimed before anything is done, so a
repeated request joins the job instead of starting another. Replays go through
:meth:`DeadLetterQueue.replay`; whatever it refuses is a failure of that record, shown to the
operator, never the end of the job. Every action is logged with who asked and what was done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

import nats.errors
from nats.js.errors import NotFoundError
from pydantic_core import from_json, to_json

from ..dlq_admin import DeadLetterNotFoundError
from ..errors import NatsPubsubError
from .query import DeadLetterFilter

if TYPE_CHECKING:
    from ..dlq import DeadLetterRecord
    from .backend import ConsoleBackend
    from .idempotency import IdempotencyStore

__all__ = ("ActionKind", "ActionRequest", "ActionRunner", "Job", "JobConflictError")

logger = logging.getLogger("faststream_natspubsub.console")

# Records acted on at once by a bulk job.
ACTION_CONCURRENCY: Final = 8
# Finished jobs kept in memory for their result pages.
_KEEP_JOBS: Final = 200
# Failures listed on a job's page (the log has every one).
_KEEP_FAILURES: Final = 200
# What a replay or delete may raise for one record: the record's or the server's fault.
_RECORD_ERRORS: Final = (NatsPubsubError, nats.errors.Error, TimeoutError)


class ActionKind(str, Enum):
    """What an action does."""

    REPLAY = "replay"
    """Publish the original event again (``DeadLetterQueue.replay``), removing the record."""
    PURGE = "purge"
    """Delete the record for good."""


class JobConflictError(NatsPubsubError, ValueError):
    """An idempotency key sent again with another action than the one it was used for."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionRequest:
    """One action as the confirmation form describes it."""

    kind: ActionKind
    seq: int | None = None
    """One record; ``None`` for the filtered set."""
    filter: DeadLetterFilter = field(default_factory=DeadLetterFilter)
    upto: int = 0
    """The filtered set is limited to records stored up to this sequence."""

    def fingerprint(self) -> str:
        """A canonical text of the action: the same key must always mean the same action."""
        parts = [self.kind.value, str(self.seq), str(self.upto)]
        parts += [f"{k}={v}" for k, v in sorted(self.filter.to_query().items())]
        return "|".join(parts)

    def describe(self) -> str:
        """For logs and pages: ``replay of record 12``, ``purge of records matching ...``."""
        if self.seq is not None:
            return f"{self.kind.value} of record {self.seq}"
        query = self.filter.to_query()
        where = " ".join(f"{k}={v!r}" for k, v in query.items()) or "all"
        return f"{self.kind.value} of records matching {where} (stored up to seq {self.upto})"


@dataclass(slots=True, kw_only=True)
class Job:
    """An action under way or done; its key is the form's idempotency key."""

    key: str
    request: ActionRequest
    operator: str
    client: str | None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    total: int | None = None
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    """What one-record actions did (``published to ...``)."""
    error: str | None = None
    """Why the job itself stopped early."""
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def running(self) -> bool:
        """Whether the job is still at work."""
        return self.finished_at is None

    def fail(self, seq: int, message: str) -> None:
        """Count a record that could not be handled."""
        self.failed += 1
        self.processed += 1
        if len(self.failures) < _KEEP_FAILURES:
            self.failures.append((seq, message))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (progress polling, the shared idempotency store)."""
        return {
            "key": self.key,
            "action": self.request.kind.value,
            "describe": self.request.describe(),
            "fingerprint": self.request.fingerprint(),
            "operator": self.operator,
            "running": self.running,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "total": self.total,
            "processed": self.processed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "failures": [{"seq": seq, "error": text} for seq, text in self.failures],
            "results": self.results,
            "error": self.error,
        }


class ActionRunner:
    """Starts jobs once per key and keeps them for their pages."""

    def __init__(
        self,
        backend: ConsoleBackend,
        store: IdempotencyStore,
        *,
        concurrency: int = ACTION_CONCURRENCY,
    ) -> None:
        self.backend = backend
        self.store = store
        self.concurrency = concurrency
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        # Records some job is acting on right now: two jobs never handle one record at once.
        self._busy: set[int] = set()

    def job(self, key: str) -> Job | None:
        """A job this process ran or runs."""
        return self._jobs.get(key)

    async def stored(self, key: str) -> dict[str, Any] | None:
        """What the idempotency store knows of ``key`` (a job of another process, maybe)."""
        value = await self.store.get(key)
        return _decode(value) if value is not None else None

    async def submit(
        self, key: str, request: ActionRequest, *, operator: str, client: str | None
    ) -> Job | dict[str, Any]:
        """Start the action unless ``key`` was used before; returns the job or what is known.

        Raises :class:`JobConflictError` when the key was used for another action.
        """
        job = Job(key=key, request=request, operator=operator, client=client)
        existing = await self.store.claim(key, to_json(job.to_dict()))
        if existing is not None:
            here = self._jobs.get(key)
            stored = _decode(existing)
            fingerprint = here.request.fingerprint() if here else stored.get("fingerprint")
            if fingerprint and fingerprint != request.fingerprint():
                raise JobConflictError("this form was already used for another action")
            logger.info(
                "console: %s sent %s again (key %s) from %s: not run again",
                operator,
                request.describe(),
                key,
                client,
            )
            return here or stored
        logger.info(
            "console: %s started %s (key %s) from %s", operator, request.describe(), key, client
        )
        self._jobs[key] = job
        while len(self._jobs) > _KEEP_JOBS:
            oldest = next(iter(self._jobs))
            if self._jobs[oldest].running:
                break
            del self._jobs[oldest]
        task = asyncio.create_task(self._run(job), name=f"natspubsub-console-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def wait(self, job: Job, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for ``job`` to finish."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.done.wait(), timeout)

    async def close(self) -> None:
        """Stop running jobs (the server is shutting down)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- running --------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        try:
            if job.request.seq is not None:
                job.total = 1
                await self._one(job, job.request.seq)
            elif job.request.kind is ActionKind.PURGE and job.request.filter.subject_only:
                await self._purge_by_subject(job)
            else:
                await self._each(job)
        except asyncio.CancelledError:
            job.error = "stopped: the console shut down"
            raise
        except Exception as exc:  # reported on the job's page and logged
            job.error = f"{type(exc).__name__}: {exc}"
            logger.exception("console: %s failed: %s", job.request.describe(), exc)
        finally:
            job.finished_at = time.time()
            job.done.set()
            logger.info(
                "console: %s finished %s (key %s): %d done, %d failed, %d skipped%s",
                job.operator,
                job.request.describe(),
                job.key,
                job.succeeded,
                job.failed,
                job.skipped,
                f"; stopped: {job.error}" if job.error else "",
            )
            with contextlib.suppress(Exception):  # the store's trouble must not hide the result
                await self.store.update(job.key, to_json(job.to_dict()))

    def _targets(self, job: Job) -> list[int]:
        """The filtered set at the time of the confirmation, oldest first."""
        index = self.backend.index
        where = job.request.filter.index_filter(self.backend.prefix, upto_seq=job.request.upto)
        return list(index.iter_matching(where, newest_first=False))

    async def _each(self, job: Job) -> None:
        await self.backend.index.refresh(self.backend.nc())
        seqs = self._targets(job)
        job.total = len(seqs)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(seq: int) -> None:
            async with gate:
                await self._one(job, seq)

        # In chunks: a set of 100k records must not become 100k tasks at once.
        for start in range(0, len(seqs), self.concurrency * 8):
            await asyncio.gather(*(one(seq) for seq in seqs[start : start + self.concurrency * 8]))

    async def _one(self, job: Job, seq: int) -> None:
        if seq in self._busy:
            job.skipped += 1
            job.processed += 1
            return
        self._busy.add(seq)
        try:
            if job.request.kind is ActionKind.REPLAY:
                await self._replay(job, seq)
            else:
                await self._delete(job, seq)
        finally:
            self._busy.discard(seq)

    async def _replay(self, job: Job, seq: int) -> None:
        dlq = self.backend.dlq()
        try:
            record: DeadLetterRecord = await dlq.get_by_seq(seq)
            result = await dlq.replay(record)
        except DeadLetterNotFoundError as exc:
            job.fail(seq, str(exc))
            logger.warning("console: %s: replay of record %d refused: %s", job.operator, seq, exc)
            return
        except _RECORD_ERRORS as exc:
            job.fail(seq, _describe(exc))
            logger.warning("console: %s: replay of record %d failed: %s", job.operator, seq, exc)
            return
        except Exception as exc:  # a forged record must not stop the job
            job.fail(seq, f"unexpected {type(exc).__name__}: {exc}")
            logger.exception("console: %s: replay of record %d failed", job.operator, seq)
            return
        self.backend.index.remove([seq])
        job.succeeded += 1
        job.processed += 1
        line = (
            f"record {seq} (event {result.event_id}) published to {result.subject}"
            f" (stream {result.stream} seq {result.seq}{', duplicate' if result.duplicate else ''})"
        )
        if job.request.seq is not None:
            job.results.append(line)
            logger.info("console: %s replayed %s", job.operator, line)
        else:
            logger.debug("console: %s replayed %s", job.operator, line)

    async def _delete(self, job: Job, seq: int) -> None:
        try:
            await self.backend.js().delete_msg(self.backend.stream, seq)
        except NotFoundError:
            self.backend.index.remove([seq])
            job.fail(seq, f"no record at seq {seq} (already gone)")
            return
        except _RECORD_ERRORS as exc:
            job.fail(seq, _describe(exc))
            logger.warning("console: %s: purge of record %d failed: %s", job.operator, seq, exc)
            return
        self.backend.index.remove([seq])
        job.succeeded += 1
        job.processed += 1
        if job.request.seq is not None:
            job.results.append(f"record {seq} deleted")
            logger.info("console: %s purged record %d", job.operator, seq)

    async def _purge_by_subject(self, job: Job) -> None:
        """One server request: purge the subjects of the filter below the snapshot."""
        backend = self.backend
        nc = backend.nc()
        await backend.index.refresh(nc)
        seqs = self._targets(job)
        job.total = len(seqs)
        request = {
            "filter": job.request.filter.subject_pattern(backend.prefix),
            "seq": job.request.upto + 1,
        }
        reply = await nc.request(
            f"$JS.API.STREAM.PURGE.{backend.stream}", to_json(request), timeout=10.0
        )
        answer = from_json(reply.data)
        if "error" in answer:
            raise NatsPubsubError(f"purge refused: {answer['error'].get('description')}")
        purged = int(answer.get("purged", 0))
        backend.index.remove(seqs)
        job.succeeded = purged
        job.processed = job.total = max(purged, len(seqs))


def _describe(exc: BaseException) -> str:
    description = getattr(exc, "description", None)
    return str(description or exc) or type(exc).__name__


def _decode(value: bytes) -> dict[str, Any]:
    try:
        data = from_json(value) if value else {}
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}
