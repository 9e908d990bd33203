"""The fast scan and the DLQ index, against a live server."""

from __future__ import annotations

import json

import pytest
from console_support import REASONS, TOPICS, connected, record_messages, seed_records, seeded
from nats.js.api import StreamConfig
from support import wait_until

from faststream_natspubsub.console.errors import ConsoleError
from faststream_natspubsub.console.index import (
    UNREADABLE,
    DeadLetterIndex,
    IndexBuildingError,
    IndexFilter,
    record_facts,
)
from faststream_natspubsub.console.query import subject_matcher
from faststream_natspubsub.console.scan import parse_ack_reply, scan_stream
from faststream_natspubsub.subjects import dlq_stream_name, dlq_subject_prefix
from faststream_natspubsub.testing import EmbeddedNatsServer

ENV, APP = "dev", "billing"
STREAM = dlq_stream_name(ENV, APP)
PREFIX = dlq_subject_prefix(ENV, APP)


def new_index(limit: int = 1_000_000) -> DeadLetterIndex:
    return DeadLetterIndex(STREAM, subject_filter=f"{PREFIX}.>", limit=limit)


def seqs(index: DeadLetterIndex, where: IndexFilter | None = None) -> list[int]:
    return list(index.iter_matching(where or IndexFilter(), newest_first=False))


# -- reply subjects and record facts (no server) ----------------------------------------------


def test_the_stream_sequence_and_time_come_from_either_reply_subject_form() -> None:
    v1 = "$JS.ACK.DLQ_DEV_BILLING.scan1.1.42.7.1700000000123456789.3"
    v2 = "$JS.ACK.hub.acchash.DLQ_DEV_BILLING.scan1.1.42.7.1700000000123456789.3.rnd"
    assert parse_ack_reply(v1) == (42, 1700000000123456789)
    assert parse_ack_reply(v2) == (42, 1700000000123456789)
    for junk in ("_INBOX.x", "$JS.ACK.a.b.c.notanumber.e.f.g"):
        with pytest.raises(ConsoleError):
            parse_ack_reply(junk)


def test_facts_of_a_body_that_is_not_a_record_say_so() -> None:
    assert record_facts(b"\xff not json").reason == UNREADABLE
    assert record_facts(b"[1, 2]").reason == UNREADABLE
    assert record_facts(b'{"reason": "x"}').error_message == "not a dead-letter record"


async def test_facts_of_a_record_with_forged_types_are_checked() -> None:
    _, body, _ = (await record_messages(ENV, APP, 1))[0]
    record = json.loads(body)
    record.update(attempts="lots", event_id=["x"], error_type=None, error_message="m" * 5000)
    facts = record_facts(json.dumps(record).encode())
    assert (facts.attempts, facts.event_id, facts.error_type) == (0, "", "")
    assert len(facts.error_message) == 1000
    assert facts.reason == seeded(0).reason


def test_subject_patterns_match_like_nats() -> None:
    matches = subject_matcher("dlq.dev.billing.*.order.>")
    assert matches("dlq.dev.billing.orders.order.created")
    assert matches("dlq.dev.billing.shop.order.paid.eu")
    assert not matches("dlq.dev.billing.orders.order")
    assert not matches("dlq.dev.billing.orders.payment.captured")
    exact = subject_matcher("dlq.dev.billing.orders.order.paid")
    assert exact("dlq.dev.billing.orders.order.paid")
    assert not exact("dlq.dev.billing.orders.order.paid.x")


# -- the scan ------------------------------------------------------------------------------


@pytest.mark.nats
async def test_a_scan_reads_every_message_in_order_in_batches(server: EmbeddedNatsServer) -> None:
    async with connected(server.url) as nc:
        await seed_records(nc, ENV, APP, 45)
        batches = [b async for b in scan_stream(nc, STREAM, batch=10)]
        assert [len(b) for b in batches] == [10, 10, 10, 10, 5]
        found = [m.seq for b in batches for m in b]
        assert found == list(range(1, 46))
        assert all(m.data for b in batches for m in b)
        assert batches[0][0].time_ns > 0


@pytest.mark.nats
async def test_a_scan_starts_stops_and_filters_where_asked(server: EmbeddedNatsServer) -> None:
    async with connected(server.url) as nc:
        await seed_records(nc, ENV, APP, 40)
        ranged = [
            m.seq async for b in scan_stream(nc, STREAM, start_seq=11, stop_seq=17) for m in b
        ]
        assert ranged == list(range(11, 18))
        paid = f"{PREFIX}.orders.order.paid"
        filtered = [m async for b in scan_stream(nc, STREAM, filter_subject=paid) for m in b]
        assert [m.seq for m in filtered] == [
            i + 1 for i in range(40) if seeded(i).topic == "order.paid"
        ]
        assert {m.subject for m in filtered} == {paid}
        headers = [m async for b in scan_stream(nc, STREAM, headers_only=True) for m in b]
        assert len(headers) == 40
        assert all(m.data == b"" and m.headers["x-dlq-reason"] for m in headers)


@pytest.mark.nats
@pytest.mark.parametrize("max_bytes", [5_000, 300], ids=["a-few-per-request", "one-too-large"])
async def test_a_scan_limited_in_bytes_still_reads_everything(
    server: EmbeddedNatsServer, max_bytes: int
) -> None:
    async with connected(server.url) as nc:
        await seed_records(nc, ENV, APP, 12)
        found = [m.seq async for b in scan_stream(nc, STREAM, max_bytes=max_bytes) for m in b]
        assert found == list(range(1, 13))


@pytest.mark.nats
async def test_a_scan_left_early_removes_its_consumer(server: EmbeddedNatsServer) -> None:
    async with connected(server.url) as nc:
        await seed_records(nc, ENV, APP, 30)
        scan = scan_stream(nc, STREAM, batch=5)
        async for _ in scan:
            break
        await scan.aclose()
        info = await nc.jetstream().stream_info(STREAM)
        assert info.state.consumer_count == 0


# -- the index -----------------------------------------------------------------------------


@pytest.mark.nats
async def test_the_index_reads_new_records_only_and_counts_them(
    server: EmbeddedNatsServer,
) -> None:
    async with connected(server.url) as nc:
        await seed_records(nc, ENV, APP, 24)
        index = new_index()
        state = await index.refresh(nc)
        assert (state.exists, state.records, state.last_seq) == (True, 24, 24)
        await seed_records(nc, ENV, APP, 8, start=24)
        state = await index.refresh(nc)
        assert state.records == 32
        assert seqs(index) == list(range(1, 33))
        assert index.counts_by("reason") == {r.value: 8 for r in REASONS}
        topics = {
            s.rsplit(".", 2)[-2] + "." + s.rsplit(".", 1)[-1]: n
            for s, n in index.counts_by("subject").items()
        }
        assert topics == dict.fromkeys(TOPICS, 8)
        entry = index.entry(3)
        assert entry is not None
        assert (entry.reason, entry.attempts, entry.error_type) == (seeded(2).reason, 5, "_Failure")
        assert entry.error_message == seeded(2).error


@pytest.mark.nats
async def test_the_index_filters_by_reason_subject_time_and_text(
    server: EmbeddedNatsServer,
) -> None:
    async with connected(server.url) as nc:
        await seed_records(nc, ENV, APP, 40)
        index = new_index()
        await index.refresh(nc)
        reason = REASONS[3].value
        assert seqs(index, IndexFilter(reason=reason)) == [
            i + 1 for i in range(40) if seeded(i).reason == reason
        ]
        paid = IndexFilter(subjects=subject_matcher(f"{PREFIX}.*.order.paid"))
        assert seqs(index, paid) == [i + 1 for i in range(40) if seeded(i).topic == "order.paid"]
        assert seqs(index, IndexFilter(text="TIMEOUT")) == [1, 11, 21, 31]
        assert seqs(index, IndexFilter(text="_failure")) == list(range(1, 41))  # the error type
        assert seqs(index, IndexFilter(upto_seq=5)) == [1, 2, 3, 4, 5]
        tenth = index.entry(10)
        assert tenth is not None
        assert seqs(index, IndexFilter(since_ns=tenth.time_ns))[0] == 10
        assert seqs(index, IndexFilter(reason="no such reason")) == []
        expected = sum(1 for i in range(40) if seeded(i).reason == reason)
        assert index.count(IndexFilter(reason=reason), key="r") == expected
        assert [e.seq for e in index.newest(IndexFilter(), before=30, limit=3)] == [29, 28, 27]
        assert [e.seq for e in index.oldest(IndexFilter(), after=30, limit=3)] == [31, 32, 33]


@pytest.mark.nats
async def test_the_index_notices_records_deleted_by_someone_else(
    server: EmbeddedNatsServer,
) -> None:
    async with connected(server.url) as nc:
        js = nc.jetstream()
        await seed_records(nc, ENV, APP, 20)
        index = new_index()
        await index.refresh(nc)
        for seq in (3, 7, 20):
            await js.delete_msg(STREAM, seq)
        await js.purge_stream(STREAM, subject=f"{PREFIX}.orders.invoice.sent")  # 4, 8, 12, 16
        state = await index.refresh(nc)
        assert seqs(index) == [1, 2, 5, 6, 9, 10, 11, 13, 14, 15, 17, 18, 19]
        assert state.records == 13
        await js.purge_stream(STREAM, seq=11)  # everything below 11
        await index.refresh(nc)
        assert seqs(index) == [11, 13, 14, 15, 17, 18, 19]
        assert index.count(IndexFilter()) == 7


@pytest.mark.nats
async def test_a_recreated_stream_is_indexed_afresh(server: EmbeddedNatsServer) -> None:
    async with connected(server.url) as nc:
        js = nc.jetstream()
        await seed_records(nc, ENV, APP, 10)
        index = new_index()
        await index.refresh(nc)
        await js.delete_stream(STREAM)
        assert not (await index.refresh(nc)).exists
        await js.add_stream(StreamConfig(name=STREAM, subjects=[f"{PREFIX}.>"]))
        await seed_records(nc, ENV, APP, 3, start=100)
        await index.refresh(nc)
        assert seqs(index) == [1, 2, 3]
        entry = index.entry(1)
        assert entry is not None
        assert entry.event_id.endswith("000000000100")


@pytest.mark.nats
async def test_an_index_over_its_limit_keeps_the_newest_records(
    server: EmbeddedNatsServer,
) -> None:
    async with connected(server.url) as nc:
        await seed_records(nc, ENV, APP, 30)
        index = new_index(limit=10)
        state = await index.refresh(nc)
        assert state.partial
        assert seqs(index) == list(range(21, 31))
        await seed_records(nc, ENV, APP, 5, start=30)
        await index.refresh(nc)
        assert seqs(index) == list(range(26, 36))


@pytest.mark.nats
async def test_an_unreadable_message_is_indexed_as_such(server: EmbeddedNatsServer) -> None:
    async with connected(server.url) as nc:
        await seed_records(nc, ENV, APP, 1)
        await nc.publish(f"{PREFIX}.orders.order.created", b"<not json>")
        await nc.flush()
        index = new_index()

        async def both_indexed() -> bool:
            return (await index.refresh(nc)).records == 2

        await wait_until(both_indexed, message="the junk message indexed")
        entry = index.entry(2)
        assert entry is not None
        assert entry.reason == UNREADABLE
        assert seqs(index, IndexFilter(reason=UNREADABLE)) == [2]


@pytest.mark.nats
async def test_a_long_first_build_reports_progress_and_goes_on(
    server: EmbeddedNatsServer,
) -> None:
    async with connected(server.url) as nc:
        await seed_records(nc, ENV, APP, 3000)
        index = new_index()
        with pytest.raises(IndexBuildingError) as building:
            await index.refresh(nc, wait=0.001)
        assert building.value.done < 3000
        # the build goes on without anyone waiting for it
        await wait_until(lambda: index.progress[1] == 3000, message="the build under way")
        state = await index.refresh(nc)  # waits for the build under way, then reads what is new
        assert state.records == 3000
