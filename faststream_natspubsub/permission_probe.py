"""Checking at start the rights a consumer would otherwise miss only after harm is done.

A refused ack, pull or dead-letter write gets no answer at all: the app would start, run
handlers twice or let events reach ``max_deliver`` with no record. Each of these rights can
be tried at start with a message the server refuses to act on, so nothing changes when the
right is there and the server reports a violation when it is not:

- a pull request without a reply subject (the server ignores it);
- an "ack" on ``$JS.ACK.<stream>.<durable>.<probe>``, which no delivery has (ignored);
- a dead-letter write whose ``Nats-Expected-Stream`` no stream has (refused, not stored);
- an advisory reader create naming another stream in its body (refused), and its pull;
- a KV write expecting a last sequence the key cannot have (refused), and a KV read without
  a reply subject (a read whose answer goes nowhere).

Then two round trips to the server: nats-py may write a ``PING`` before publishes still in
its buffer, so the second ``PONG`` is the one that surely follows their answers.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

from .advisory_read import reader_name
from .compat import kv_reads_directly
from .dlq import dlq_subject
from .guarded_kv import GuardedKeyValue

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

    from .permissions import AppAccess
    from .violations import PermissionWatch, Violation

__all__ = ("PROBE_TOKEN", "probe_consumer_rights")

# The token the probes use where a subject or key needs one of their own.
PROBE_TOKEN: Final = "natspubsub-permission-probe"  # noqa: S105 - a subject token
# A last sequence no key can have: the probe's KV write is refused, never stored.
_IMPOSSIBLE_SEQUENCE: Final = str(2**63 - 1)


def _concrete(subject: str) -> str:
    """A subject without wildcards that ``subject`` matches."""
    return ".".join(PROBE_TOKEN if t in ("*", ">") else t for t in subject.split("."))


async def probe_consumer_rights(
    nc: Client,
    watch: PermissionWatch,
    access: AppAccess,
    kv: KeyValue | GuardedKeyValue | None,
) -> list[Violation]:
    """The violations the probes of ``access``'s consumer rights caused (none: all there)."""
    mark = watch.count
    for consumer in access.consumers:
        stream, durable = consumer.stream, consumer.durable
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}", b'{"batch":1}')
        await nc.publish(f"$JS.ACK.{stream}.{durable}.{PROBE_TOKEN}", b"")
        if access.dlq_stream is None:
            continue
        await nc.publish(
            _concrete(dlq_subject(access.dlq_prefix, consumer.filter_subject)),
            b"",
            headers={"Nats-Expected-Stream": PROBE_TOKEN},
        )
        reader = reader_name(durable)
        refused = json.dumps({"stream_name": PROBE_TOKEN, "config": {"name": reader}})
        await nc.publish(
            f"$JS.API.CONSUMER.CREATE.{stream}.{reader}.{consumer.filter_subject}",
            refused.encode(),
        )
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{reader}", b'{"batch":1}')
    if kv is not None and access.kv_bucket is not None:
        bucket = access.kv_bucket
        key = f"$KV.{bucket}.{PROBE_TOKEN}"
        await nc.publish(
            key, b"", headers={"Nats-Expected-Last-Subject-Sequence": _IMPOSSIBLE_SEQUENCE}
        )
        nats_kv = kv.unguarded if isinstance(kv, GuardedKeyValue) else kv
        if kv_reads_directly(nats_kv):  # a bucket made with direct gets (nats kv add)
            await nc.publish(f"$JS.API.DIRECT.GET.KV_{bucket}.{key}", b"")
        else:
            read = json.dumps({"last_by_subj": key}).encode()
            await nc.publish(f"$JS.API.STREAM.MSG.GET.KV_{bucket}", read)
    await nc.flush()
    await nc.flush()
    return watch.since(mark)
