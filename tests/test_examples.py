"""The examples the docs include run and do what the docs say; the docs build cleanly."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from faststream import TestApp
from faststream.nats import NatsBroker, TestNatsBroker
from support import wait_until

from faststream_natspubsub import SubjectError
from faststream_natspubsub.subjects import consumer_name
from faststream_natspubsub.testing import EmbeddedNatsServer, TestNatsPubsub

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


async def test_quickstart_publishes_on_startup_and_handles_the_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the quick start app, in memory
    quickstart = load("quickstart")

    # When it starts
    async with TestNatsBroker(quickstart.broker), TestApp(quickstart.app):
        # Then its startup hook published the order and the handler got it
        quickstart.on_created.mock.assert_called_once_with({"order_id": "ORD-1", "total": 25.0})
    assert "order ORD-1: event " in capsys.readouterr().out


@pytest.mark.nats
async def test_e01_handles_an_event_with_its_metadata_and_detects_the_duplicate(
    server: EmbeddedNatsServer,
) -> None:
    outcome = await load("e01_basic_pubsub").main(server.url)

    published, meta = outcome.published, outcome.meta
    assert (outcome.order.order_id, outcome.order.total) == ("ORD-1", 25.0)
    assert published.subject == meta.subject == "dev.orders.order.created"
    assert published.stream == meta.stream == "DEV_ORDERS"
    assert meta.event_id == published.event_id
    assert meta.stream_seq == published.seq
    assert meta.topic == "order.created"
    assert meta.deliveries == 1
    assert meta.correlation_id == "checkout-1"
    assert meta.app_name == "orders"
    assert outcome.envelope.event_id == published.event_id
    assert outcome.envelope.metadata["environment"] == "dev"
    assert outcome.duplicate.duplicate is True
    assert outcome.duplicate.seq == published.seq


@pytest.mark.nats
async def test_e02_retries_dead_letters_and_replays(server: EmbeddedNatsServer) -> None:
    outcome = await load("e02_retries_and_dlq").main(server.url)

    # PAY-2 succeeded on its second delivery, PAY-4 used all three attempts
    assert outcome.attempts["PAY-1"] == [1]
    assert outcome.attempts["PAY-2"] == [1, 2]
    assert outcome.attempts["PAY-4"] == [1, 2, 3]
    # PAY-3 failed once (permanent), then ran again once replayed
    assert outcome.attempts["PAY-3"] == [1, 1]
    assert sorted(outcome.charged) == ["PAY-1", "PAY-2", "PAY-3"]

    by_reason = {record.reason: record for record in outcome.dead_letters}
    assert set(by_reason) == {"permanent_error", "max_attempts_exceeded"}
    permanent = by_reason["permanent_error"]
    assert permanent.error_type == "PermanentError"
    assert permanent.attempts == 1
    assert permanent.envelope is not None
    assert permanent.envelope["message"]["payment_id"] == "PAY-3"
    exhausted = by_reason["max_attempts_exceeded"]
    assert exhausted.error_type == "TimeoutError"
    assert exhausted.attempts == 3
    assert exhausted.original_subject == "dev.payments.payment.requested"

    assert outcome.replayed.event_id == permanent.event_id
    assert outcome.replayed.subject == "dev.payments.payment.requested"
    assert [r.reason for r in outcome.left_after_replay] == ["max_attempts_exceeded"]


@pytest.mark.nats
async def test_e03_billing_answers_each_order_with_an_invoice(server: EmbeddedNatsServer) -> None:
    outcome = await load("e03_two_services_routers").main(server.url)

    invoices = {invoice.order_id: (invoice, meta) for invoice, meta in outcome.invoices}
    assert set(invoices) == {"ORD-1", "ORD-2"}
    german, german_meta = invoices["ORD-1"]
    assert (german.net, german.tax, german.total) == (100.0, 19.0, 119.0)  # Depends(TaxTable)
    assert invoices["ORD-2"][0].tax == 0.0
    for placed, order_id, request_id in zip(
        outcome.placed, ("ORD-1", "ORD-2"), ("req-1", "req-2"), strict=True
    ):
        meta = invoices[order_id][1]
        assert meta.subject == "dev.billing.invoice.created"
        assert meta.app_name == "billing"
        assert meta.causation_id == placed.event_id
        assert meta.correlation_id == request_id
    assert german_meta.event_id != outcome.placed[0].event_id
    # Fan-out: shop's own consumer of order.placed saw both orders too
    assert sorted(outcome.audit_log) == ["ORD-1", "ORD-2"]


async def test_e04_in_memory_tests_pass_without_a_server() -> None:
    names = await load("e04_in_memory_testing").main()

    assert names == [
        "test_a_paid_order_is_shipped_with_its_correlation_id",
        "test_an_order_without_address_is_dead_lettered",
        "test_an_invalid_order_is_dead_lettered_as_a_validation_error",
    ]


@pytest.mark.nats
async def test_e05_publish_many_reports_each_item_and_publishers_wrap(
    server: EmbeddedNatsServer,
) -> None:
    outcome = await load("e05_publishing").main(server.url)

    first, chosen, bad = outcome.results
    assert first.ok
    assert chosen.ok
    assert chosen.event_id == "imp-7:A-2"
    assert (first.seq, chosen.seq) == (1, 2)
    assert isinstance(bad.error, SubjectError)
    assert not bad.ok
    received: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for body, meta in outcome.received:
        received.setdefault(meta.topic, []).append((body, meta))
    assert [body["sku"] for body, _ in received["product.created"]] == ["A-1", "A-2"]
    assert {meta.correlation_id for _, meta in received["product.created"]} == {"import-7"}
    [(price, price_meta)] = received["product.price_changed"]
    assert price == {"sku": "A-1", "price": 9.5}
    assert price_meta.user_id == "u-42"


@pytest.mark.nats
async def test_e06_main_round_trips_a_greeting(server: EmbeddedNatsServer) -> None:
    assert await load("e06_pytest_fixtures").main(server.url) == {"text": "hello"}


@pytest.mark.nats
@pytest.mark.slow  # a child interpreter (or the docs build): seconds
def test_the_example_test_files_pass_under_pytest_with_the_plugin_fixtures() -> None:
    # e04 as a user runs it, and e06 with the nats_url fixture the package registers
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(EXAMPLES / "e04_in_memory_testing.py"),
            str(EXAMPLES / "e06_pytest_fixtures.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "4 passed" in completed.stdout


@pytest.mark.slow  # a child interpreter (or the docs build): seconds
def test_the_docs_build_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (tmp_path / "site" / "index.html").exists()


@pytest.mark.nats
async def test_e07_the_kv_inbox_runs_the_handler_once_for_a_republished_event(
    server: EmbeddedNatsServer,
) -> None:
    outcome = await load("e07_inbox").main(server.url)

    # The stream stored both copies (different Nats-Msg-Ids)...
    assert (outcome.first.seq, outcome.copy_seq) == (1, 2)
    # ...and the handler ran once, for the event id both carry
    assert outcome.posted == [outcome.first.event_id]
    assert outcome.duplicates == 1
    assert outcome.bucket == "natspubsub_inbox_dev_ledger"
    durable = consumer_name("ledger", "dev.ledger.entry.posted")
    assert outcome.inbox == {f"{durable}.entry=posted.{outcome.first.event_id}": b"processed"}


@pytest.mark.nats
async def test_e08_one_trace_across_publish_consume_retry_and_reply(
    server: EmbeddedNatsServer,
) -> None:
    outcome = await load("e08_tracing").main(server.url)

    # Both deliveries of order.created and the order.confirmed handler saw one trace id
    assert len(outcome.trace_ids) == 3
    trace_id = outcome.trace_ids[0]
    assert trace_id is not None
    assert len(trace_id) == 32
    assert set(outcome.trace_ids) == {trace_id}
    # Every span the console exporter wrote is in that trace
    spans = outcome.spans
    assert {span["context"]["trace_id"] for span in spans} == {f"0x{trace_id}"}
    consume = [s for s in spans if s["kind"] == "SpanKind.CONSUMER"]
    assert sorted(s["name"] for s in consume) == [
        "dev.orders.order.confirmed process",
        "dev.orders.order.created process",
        "dev.orders.order.created process",
    ]
    retries = [e for s in consume for e in s["events"] if e["name"] == "natspubsub.retry"]
    assert len(retries) == 1
    assert retries[0]["attributes"]["natspubsub.attempt"] == 1
    assert retries[0]["attributes"]["natspubsub.delay_s"] == 0.1
    assert retries[0]["attributes"]["exception.type"] == "ConnectionError"
    # The reply's publish span is a child of the consume span that made it
    reply = next(s for s in spans if s["name"] == "dev.orders.order.confirmed publish")
    parents = {s["context"]["span_id"] for s in consume if "order.created" in s["name"]}
    assert reply["parent_id"] in parents
    # The metrics counted the same story
    counters = outcome.counters
    assert counters["natspubsub.messages.published"] == 2
    assert counters["natspubsub.messages.consumed"] == 3
    assert counters["natspubsub.messages.retried"] == 1
    assert counters["natspubsub.messages.acked"] == 2
    assert counters["natspubsub.handler.duration"] == 3  # one sample per delivery


@pytest.mark.nats
async def test_e09_a_batch_gives_each_item_its_own_outcome(server: EmbeddedNatsServer) -> None:
    outcome = await load("e09_batch").main(server.url)

    # One call for the backlog (the invalid item never reaches the handler), then B-2 alone
    assert outcome.batches == [
        [("A-1", 1), ("B-2", 1), ("C-3", 1), ("D-4", 1)],
        [("B-2", 2)],
    ]
    assert outcome.saved == ["A-1", "D-4", "B-2"]
    by_error = {record.error_type: record for record in outcome.dead_letters}
    assert set(by_error) == {"PermanentError", "ValidationError"}
    assert {record.reason for record in outcome.dead_letters} == {"permanent_error"}
    assert by_error["PermanentError"].envelope is not None
    assert by_error["PermanentError"].envelope["message"]["sku"] == "C-3"
    assert by_error["ValidationError"].envelope is not None
    assert by_error["ValidationError"].envelope["message"]["sku"] == "E-5"


async def test_e10_in_memory_an_event_is_dead_lettered_after_five_attempts() -> None:
    outcome = await load("e10_in_memory_failures").main()

    assert outcome.delays == [1, 2, 5, 10]
    assert [r.deliveries for r in outcome.redeliveries] == [1, 2, 3, 4]
    assert {r.subject for r in outcome.redeliveries} == {"test.payments.payment.requested"}
    [record] = outcome.dead_letters
    assert record.event_id == outcome.published.event_id
    assert record.reason == "max_attempts_exceeded"
    assert record.attempts == 5
    assert record.error_type == "ConnectionError"
    assert outcome.charged == []


@pytest.mark.slow  # a child interpreter (or the docs build): seconds
def test_e10_the_example_tests_pass_under_pytest() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(EXAMPLES / "e10_in_memory_failures.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "3 passed" in completed.stdout


@pytest.mark.nats
async def test_e11_reports_health_in_code_and_over_http(server: EmbeddedNatsServer) -> None:
    report, (status, body) = await load("e11_health").main(server.url)

    assert report.status.value == "healthy"
    assert set(report.components) == {
        "connection",
        "jetstream",
        "permissions",
        "stream:DEV_ORDERS",
        "stream:DLQ_DEV_ORDERS",
        f"consumer:DEV_ORDERS/{consumer_name('orders', 'dev.orders.order.created')}",
    }
    assert status == 200
    assert body["status"] == "healthy"
    assert body["components"]["jetstream"]["status"] == "healthy"


@pytest.mark.nats
async def test_e11_the_probe_answers_503_when_the_server_is_gone() -> None:
    e11 = load("e11_health")
    async with EmbeddedNatsServer() as server:
        app, pubsub = e11.create_app(server.url)
        await pubsub.broker.start()
        try:
            await server.kill()
            status, body = await e11.probe(app)
            await server.restart()  # so the broker can close its connection cleanly
            await wait_until(lambda: pubsub.broker.connection.is_connected, message="reconnect")
        finally:
            await pubsub.broker.stop()
    assert status == 503
    assert body["status"] == "unhealthy"


@pytest.mark.nats
async def test_e12_two_apps_on_one_broker_bill_once_and_dead_letter_in_their_own_dlq(
    server: EmbeddedNatsServer,
) -> None:
    seen = await load("e12_modular_monolith").main(server.url)

    assert [(i.order_id, i.total) for i, _ in seen.invoices] == [("ORD-1", 12.0)]
    meta = seen.invoices[0][1]
    assert (meta.app_name, meta.correlation_id) == ("billing", "c-1")
    assert seen.refused == ["permanent_error"]


async def test_e12_in_memory_the_same_modules_under_test_nats_pubsub() -> None:
    e12 = load("e12_modular_monolith")
    seen = e12.Seen()
    shop, _billing = e12.create_monolith(NatsBroker(), seen)
    async with TestNatsPubsub(shop) as tp:
        await shop.publish("order.placed", e12.OrderPlaced(order_id="ORD-9", amount=5))
        await shop.publish("order.placed", e12.OrderPlaced(order_id="ORD-0", amount=0))
    assert [i.order_id for i, _ in seen.invoices] == ["ORD-9"]
    assert [(r.reason, r.app) for r in tp.dead_letters] == [("permanent_error", "billing")]


@pytest.mark.nats
async def test_e15_the_console_is_served_inside_the_asgi_app(server: EmbeddedNatsServer) -> None:
    outcome = await load("e15_console").main(server.url)

    assert outcome.health == 200
    assert outcome.without_token == 303  # to the login form
    assert "dev / payments" in outcome.overview
    assert "permanent_error" in outcome.overview
    assert "Outbox pending" in outcome.overview  # the stand-in outbox provider
    assert "card declined for PAY-1" in outcome.record
    assert "Replay…" in outcome.record


@pytest.mark.nats
async def test_e16_the_outbox_publishes_committed_orders_and_the_sql_inbox_charges_once(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    outcome = await load("e16_outbox_sql_inbox").main(server.url, tmp_path)

    # Two committed orders published, the rolled-back one not; the copy charged nothing
    assert outcome.published == 2
    assert [event_id for _, event_id in outcome.payments] == outcome.placed
    assert [order_id for order_id, _ in outcome.payments] == ["ORD-1", "ORD-2"]
    assert outcome.duplicates == 1


@pytest.mark.nats
async def test_e17_two_apps_run_with_exactly_their_generated_permissions() -> None:
    assert await load("e17_permissions").main() == ["ORD-1"]


async def test_e18_each_account_is_posted_in_order_and_a_retry_holds_only_its_account(
    server: EmbeddedNatsServer,
) -> None:
    outcome = await load("e18_ordered").main(server.url)

    assert outcome.by_account == {account: list(range(1, 11)) for account in "ABC"}
    assert outcome.attempts[("B", 1)] == 2
    assert all(n == 1 for key, n in outcome.attempts.items() if key != ("B", 1))


@pytest.mark.slow  # over 2 s: the fast tier stays under 3 min
async def test_e19_an_outage_pauses_the_subscriber_and_dead_letters_nothing(
    server: EmbeddedNatsServer,
) -> None:
    outcome = await load("e19_circuit_breaker").main(server.url)

    assert sorted(outcome.charged) == list(range(30))
    assert set(outcome.charged.values()) == {1}
    assert "open" in outcome.breaker_states
    assert outcome.dead_letters == 0
