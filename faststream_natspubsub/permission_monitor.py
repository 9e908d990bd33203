"""An app's reaction to a permission the server refuses while it runs.

Without its pull, ack, dead-letter, advisory or inbox rights a subscriber does harm rather
than nothing: refused acks make handlers run twice, refused dead-letter writes and advisory
reads let events reach ``max_deliver`` with no record, refused inbox reads dead-letter every
event. So when the server refuses a subject one of the app's permissions covers, the monitor
logs it at ERROR once (naming the permission to add), stops the subscribers that need it
(consuming nothing rather than burning deliveries; what they hold goes back to the server)
and reports it in ``health()`` until the app restarts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .health import ComponentHealth, HealthStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .permissions import Permission, PermissionSet
    from .violations import Violation

__all__ = ("PermissionMonitor",)

logger = logging.getLogger("faststream_natspubsub.permissions")


class PermissionMonitor:
    """Listens to an app's connection (a :class:`PermissionWatch` listener)."""

    def __init__(self, *, permissions: PermissionSet, subscribers: Mapping[str, Any]) -> None:
        self.permissions = permissions
        self._subscribers = dict(subscribers)
        """Each durable's FastStream subscriber."""
        self.refused: dict[Permission, Violation] = {}
        self.stopped: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, violation: Violation) -> None:
        permission = self.permissions.find(violation)
        if permission is None or permission in self.refused:
            return
        self.refused[permission] = violation
        stopping = [d for d in permission.needed_by if d not in self.stopped]
        self.stopped += stopping
        verb = "publish to" if permission.action == "publish" else "subscribe to"
        logger.error(
            'app %s: permission denied: the user may not %s "%s" (needed to %s)%s; add it to '
            "the user's %s allow list (`natspubsub permissions` prints all the app needs)",
            self.permissions.app,
            verb,
            permission.subject,
            permission.purpose,
            f"; stopped consuming {', '.join(stopping)}" if stopping else "",
            permission.action,
            extra={
                "natspubsub_permission": permission.subject,
                "natspubsub_action": permission.action,
                "natspubsub_stopped": stopping,
            },
        )
        for durable in stopping:
            subscriber = self._subscribers.get(durable)
            if subscriber is not None:
                task = asyncio.get_running_loop().create_task(self._stop(durable, subscriber))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _stop(self, durable: str, subscriber: Any) -> None:
        try:
            await subscriber.stop()
        except Exception:  # its connection may be refusing more: it is stopped all the same
            logger.debug("stopping %s after a refused permission", durable, exc_info=True)

    async def close(self) -> None:
        """Wait for the subscribers being stopped."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    def component(self) -> ComponentHealth:
        """``health()``'s ``permissions`` component: unhealthy once anything was refused."""
        if not self.refused:
            return ComponentHealth(status=HealthStatus.HEALTHY, detail="nothing refused")
        refused = [f"{p.action} {p.subject}" for p in self.refused]
        detail = "permission denied: " + "; ".join(refused)
        if self.stopped:
            detail += f" (stopped consuming {', '.join(self.stopped)})"
        return ComponentHealth(
            status=HealthStatus.UNHEALTHY,
            detail=detail,
            data={"refused": refused, "stopped": list(self.stopped)},
        )
