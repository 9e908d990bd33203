"""Pieces shared by the benchmark driver and its consumer subprocesses."""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Final, TypeVar

from faststream_natspubsub.middlewares.envelope import EnvelopeMiddleware
from faststream_natspubsub.publishing import OutgoingEvent

__all__ = (
    "CONSUME_APP",
    "ENV",
    "PUBLISH_APP",
    "TOPIC",
    "EnvelopeFactory",
    "cpu_seconds",
    "loop_name",
    "peak_rss_mb",
    "percentile",
    "rss_now_mb",
    "run",
    "sample_message",
    "summarize",
)

T = TypeVar("T")

ENV: Final = "bench"
# Two apps, so publish runs and pre-published consume runs live in separate streams.
PUBLISH_APP: Final = "pub"
CONSUME_APP: Final = "con"
TOPIC: Final = "order.created"
# The rows of what users get without tuning (the facade's defaults).
DEFAULT_KINDS: Final = (
    "plugin-default",
    "plugin-io-32",
    "plugin-io-100",
    "plugin-ordered-32",
    "plugin-kv-inbox",
    "plugin-batch-kv-inbox",
)
# Plain FastStream with the same 5 ms handler and 100 workers (its own max_workers, pull
# batches of 256): what the plugin's 100-worker row compares with in FastStream itself.
FASTSTREAM_IO_KIND: Final = "faststream-io-100"
# The I/O-bound rows' handler wait (consumer.py sleeps it; run.py's ideal is N / this).
IO_HANDLER_SECONDS: Final = 0.005

_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


def loop_name() -> str:
    """``uvloop`` when importable (used by every contender alike), else ``asyncio``."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop if it is installed, else on the default loop."""
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def sample_message(i: int, *, sent_ns: int = 0) -> dict[str, Any]:
    """An order of fixed shape; wrapped in the envelope it is about 300 bytes."""
    return {
        "order_id": f"ORD-{i:09d}",
        # 1,000 customers, each a key of the ordered row; the same length for every i.
        "customer_id": f"CUS-{i % 1000:04d}",
        "total": 99.99,
        "currency": "EUR",
        "sent_ns": sent_ns,
    }


class EnvelopeFactory:
    """Builds exactly the bytes and headers the plugin would publish, for the baselines."""

    def __init__(self, app: str) -> None:
        self._middleware = EnvelopeMiddleware(env=ENV, app=app)

    def build(self, i: int, *, sent_ns: int = 0) -> tuple[bytes, dict[str, str]]:
        """Envelope bytes of ``sample_message(i)`` and the plugin's publish headers."""
        data = self._middleware.build_envelope(
            TOPIC, OutgoingEvent(message=sample_message(i, sent_ns=sent_ns)), None
        )
        payload, _ = self._middleware.codec.encode(data)
        headers = {
            "Nats-Msg-Id": data["event_id"],
            "Nats-Published-At": data["occurred_at"],
            "content-type": "application/json",
        }
        return payload, headers


def cpu_seconds() -> float:
    """User plus system CPU time of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """Peak resident set size of this process since its ``exec``.

    ``VmHWM``, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over ``exec`` from the forked
    copy of the parent, so every consumer process would report the driver's size.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_now_mb() -> float:
    """Current resident set size, from ``/proc/self/statm``."""
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * _PAGE_SIZE / (1024 * 1024)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; ``values`` need not be sorted."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Every run plus median, min and max."""
    return {
        "runs": [round(v, 3) for v in values],
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def now() -> float:
    """A monotonic clock for rates."""
    return time.perf_counter()
