"""Claims ahead use the event id the envelope middleware will read, for every envelope form."""

from __future__ import annotations

from nats.aio.msg import Msg
from pydantic_core import to_json

from faststream_natspubsub import EnvelopeCodec, MemoryInboxStore
from faststream_natspubsub.codecs.content_types import CONTENT_TYPE_HEADER
from faststream_natspubsub.codecs.msgpack import MsgpackCodec
from faststream_natspubsub.inbox import inbox_key
from faststream_natspubsub.inbox_ahead import InboxAhead
from faststream_natspubsub.middlewares.inbox import InboxMiddleware


def _msg(data: bytes, headers: dict[str, str] | None = None) -> Msg:
    return Msg(_client=None, subject="prod.shop.x.y", reply="", data=data, headers=headers)  # type: ignore[arg-type]


def test_claim_keys_are_the_inbox_middlewares_keys_for_every_envelope_form() -> None:
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
    # The keys the inbox middleware uses: durable, the subject's topic, the event id
    assert keys == ["shop-x.x=y.e-1", "shop-x.x=y.e-2", "shop-x.x=y.e-3"]
    assert keys[0] == inbox_key("shop-x.", "prod.shop.x.y", "e-1")
    # The same lease as the inbox middleware gives this subscriber's claims
    assert ahead.lease == InboxMiddleware.scope("shop-x", 30.0)[1] == 60.0


def test_claim_keys_read_envelopes_of_other_codecs_by_their_content_type() -> None:
    # Given a MessagePack envelope, whatever the app's own codec
    codec = MsgpackCodec()
    data, _ = codec.encode({"event_id": "e-9", "message": {"n": 9}})
    ahead = InboxAhead(InboxMiddleware(MemoryInboxStore()), durable="d", ack_wait=30.0)
    headers = {CONTENT_TYPE_HEADER: codec.content_type}
    # Then its event id is read as the envelope middleware reads it; without the header the
    # bytes are not JSON, so the middleware would dead-letter it: no claim
    assert ahead._keys([_msg(data, headers)]) == ["d.x=y.e-9"]
    assert ahead._keys([_msg(data)]) == []
