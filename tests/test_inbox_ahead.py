"""Claims ahead use the event id the envelope middleware will read, for every envelope form."""

from __future__ import annotations

from nats.aio.msg import Msg
from pydantic_core import to_json

from faststream_natspubsub import EnvelopeCodec, MemoryInboxStore
from faststream_natspubsub.inbox_ahead import InboxAhead
from faststream_natspubsub.middlewares.inbox import InboxMiddleware


def _msg(data: bytes) -> Msg:
    return Msg(_client=None, subject="prod.shop.x", reply="", data=data)  # type: ignore[arg-type]


def test_claim_keys_are_the_durable_and_the_envelope_event_id() -> None:
    codec = EnvelopeCodec(compress_threshold=10)
    ahead = InboxAhead(
        InboxMiddleware(MemoryInboxStore()), codec=codec, durable="shop-x", ack_wait=30.0
    )
    plain = to_json({"event_id": "e-1", "message": {"n": 1}})
    older_form = to_json({"event_id": "e-2", "payload": {"n": 2}})
    compressed, was_compressed = codec.encode({"event_id": "e-3", "message": {"n": 3 * "x"}})
    assert was_compressed
    unreadable = [
        b"not json",
        b"[1, 2]",
        to_json({"message": {}}),  # no event id
        to_json({"event_id": 7, "message": {}}),  # not a string
        to_json({"event_id": "e-4"}),  # neither message nor payload: malformed
        b"\x1f\x8bnot gzip",
    ]
    keys = ahead._keys([_msg(d) for d in (plain, older_form, compressed, *unreadable)])
    assert keys == ["shop-x.e-1", "shop-x.e-2", "shop-x.e-3"]
    # The same lease as the inbox middleware gives this subscriber's claims
    assert ahead.lease == InboxMiddleware.scope_for("shop-x", 30.0)[1] == 60.0
