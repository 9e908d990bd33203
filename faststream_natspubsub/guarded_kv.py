"""A KV bucket whose refused operations fail at once with :class:`PermissionDeniedError`.

A KV write is a JetStream publish and a read a JetStream request: refused, each would wait
out nats-py's timeout, and the inbox would treat the wait as a failed attempt. Wrapped, the
operation ends as soon as the server reports the violation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from .violations import PermissionWatch, Violation

__all__ = ("GuardedKeyValue",)


class GuardedKeyValue:
    """The operations of ``kv`` the inbox uses, guarded by ``watch``."""

    def __init__(self, kv: KeyValue, watch: PermissionWatch, bucket: str) -> None:
        self._kv = kv
        self._watch = watch
        self._bucket = bucket
        lowered = bucket.lower()
        self._write_prefix = f"$kv.{lowered}."
        self._reads = (f"$js.api.stream.msg.get.kv_{lowered}", f"$js.api.direct.get.kv_{lowered}")
        self._refused = (self._write_prefix, *self._reads)

    @property
    def unguarded(self) -> KeyValue:
        """The nats-py bucket itself."""
        return self._kv

    def _refuses(self, violation: Violation) -> bool:
        subject = violation.subject
        return self._watch.replies_refused(violation) or (
            violation.action == "publish" and subject.startswith(self._refused)
        )

    def _name(self, violation: Violation) -> str:
        subject = violation.subject
        if subject.startswith(self._write_prefix):
            return f"$KV.{self._bucket}.{violation.subject[len(self._write_prefix) :]}"
        if subject.startswith(self._reads):
            kind = "STREAM.MSG.GET" if "msg.get" in subject else "DIRECT.GET"
            return f"$JS.API.{kind}.KV_{self._bucket}"
        return self._watch.named(violation)

    async def _run(self, operation: Any) -> Any:
        return await self._watch.run(
            operation, self._watch.guarding(self._refuses, name=self._name)
        )

    async def create(self, key: str, value: bytes) -> int:
        return int(await self._run(self._kv.create(key, value)))

    async def get(self, key: str) -> Any:
        return await self._run(self._kv.get(key))

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        return int(await self._run(self._kv.update(key, value, last=last)))

    async def put(self, key: str, value: bytes) -> int:
        return int(await self._run(self._kv.put(key, value)))

    async def delete(self, key: str) -> bool:
        return bool(await self._run(self._kv.delete(key)))
