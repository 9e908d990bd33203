"""What the pull requests of one nats-py pull inbox still owe, read from what arrives there.

Shared by the dispatcher's fetch-ahead (:class:`~faststream_natspubsub.fetching.PullSource`)
and batch mode's fetch (:class:`~faststream_natspubsub.pull.BatchFetcher`). The server answers
a pull request with messages, heartbeats (status 100) and one status that ends the request:

- 404 (nothing to deliver now) and 408 (expired; it says how many messages it did not
  deliver) end it quietly, as in nats-py;
- 409 refuses or cuts it short: too many waiting requests, a batch or an expiry over the
  consumer's limits, the consumer deleted, a leader change;
- any other status (a 503 when the consumer or JetStream is gone, a 400) ends it too.

A refusal holds the next request back for a moment, so a consumer that refuses every request
(its ``max_batch`` below the batch asked for) costs one request a pause instead of thousands
a second; each distinct refusal is logged once. Nothing here raises: a status in the middle
of a read never loses the messages read with it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = ("PullLedger",)

logger = logging.getLogger("faststream_natspubsub.pull_requests")

_STATUS: Final = "Status"
_DESCRIPTION: Final = "Description"
_HEARTBEAT: Final = "100"
_QUIET_ENDS: Final = frozenset({"404", "408"})
_PENDING_MESSAGES: Final = "Nats-Pending-Messages"
# A request refused at once is not repeated sooner than this.
REFUSED_PAUSE: Final = 0.25
# Distinct refusals logged per inbox, at most (a hostile peer could vary the text).
_MAX_REPORTED: Final = 16


class PullLedger:
    """Messages asked for and not delivered yet, when the requests expire, and the pause
    after a refusal, for one pull inbox."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.outstanding = 0
        """Messages asked for by requests that have not ended."""
        self.expires_at = 0.0
        self.refused_until = 0.0
        self._reconnects = self._reconnect_count()
        self._reported: set[str] = set()

    def lapse_expired(self) -> None:
        """Forget requests that expired or did not survive a reconnect (the server may have
        restarted)."""
        reconnects = self._reconnect_count()
        if time.monotonic() >= self.expires_at or reconnects != self._reconnects:
            self.outstanding = 0
            self._reconnects = reconnects

    def can_request(self) -> bool:
        """False for a moment after the server refused a request."""
        return time.monotonic() >= self.refused_until

    def pause_left(self) -> float:
        """Seconds until a request may be sent again (0 when it may now)."""
        return max(self.refused_until - time.monotonic(), 0.0)

    def asked(self, count: int, expires: float) -> None:
        """A request for ``count`` messages, expiring in ``expires`` seconds, was sent."""
        self.outstanding += count
        self.expires_at = max(self.expires_at, time.monotonic() + expires)

    def is_message(self, msg: Msg) -> bool:
        """True for a stream message; a status updates the accounting and is False."""
        headers = msg.headers
        status = headers.get(_STATUS) if headers else None
        if status is None:
            self.outstanding = max(self.outstanding - 1, 0)
            return True
        if status == _HEARTBEAT:
            return False
        if status in _QUIET_ENDS:
            self._ended(headers or {})
        else:  # 409, or a status nats-py would raise for: the request is over
            self.outstanding = 0
            self.refused_until = time.monotonic() + REFUSED_PAUSE
            self._report(status, (headers or {}).get(_DESCRIPTION, ""))
        return False

    def _ended(self, headers: dict[str, str]) -> None:
        # A 408 says how many of its messages the request did not deliver.
        try:
            undelivered = int(headers.get(_PENDING_MESSAGES, ""))
        except ValueError:
            self.outstanding = 0
            return
        self.outstanding = max(self.outstanding - max(undelivered, 0), 0)

    def _report(self, status: str, description: Any) -> None:
        text = f"{status} {str(description)[:200]}".strip()
        if text in self._reported or len(self._reported) >= _MAX_REPORTED:
            return
        self._reported.add(text)
        logger.warning("the server refused a pull request: %s (asking again shortly)", text)

    def _reconnect_count(self) -> int:
        stats = getattr(self.client, "stats", None)
        return int(stats.get("reconnects", 0)) if isinstance(stats, dict) else 0
