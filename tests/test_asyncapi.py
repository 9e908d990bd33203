"""AsyncAPI documents show the envelope around each payload and the DLQ channel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from faststream import FastStream
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.nats import NatsBroker
from pydantic import BaseModel

from faststream_natspubsub import AsyncAPI, EventMetadata, NatsPubsub


class Order(BaseModel):
    order_id: str
    total: float


class Receipt(BaseModel):
    order_id: str


def build_app(schema_version: str) -> FastStream:
    broker = NatsBroker()
    pubsub = NatsPubsub(broker, env="prod", app="payments")

    @pubsub.subscriber("order.created", app="orders")
    @pubsub.publisher("payment.completed")
    async def charge(order: Order, meta: EventMetadata) -> Receipt:
        return Receipt(order_id=order.order_id)

    @broker.subscriber("plain.subject")
    async def plain(body: Order) -> None: ...

    return FastStream(broker, specification=AsyncAPI(schema_version=schema_version))


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def payload_of(document: dict[str, Any], subject: str) -> dict[str, Any]:
    for channel in document["channels"].values():
        if channel.get("bindings", {}).get("nats", {}).get("subject") == subject:
            refs = [m["$ref"] for m in channel.get("messages", {}).values()]
            refs += [
                channel[op]["message"]["$ref"] for op in ("publish", "subscribe") if op in channel
            ]
            return dict(resolve(document, refs[0])["payload"])
    raise AssertionError(f"no channel for {subject}")


@pytest.mark.parametrize("version", ["3.0.0", "2.6.0"])
def test_payloads_are_wrapped_in_the_envelope(version: str) -> None:
    document = build_app(version).schema.to_specification().to_jsonable()
    json.dumps(document)  # serialisable as it is

    incoming = payload_of(document, "prod.orders.order.created")
    assert incoming["title"] == "Envelope"
    assert {"event_id", "occurred_at", "message", "metadata"} <= incoming["properties"].keys()
    assert resolve(document, incoming["properties"]["message"]["$ref"])["title"] == "Order"
    metadata = resolve(document, incoming["properties"]["metadata"]["$ref"])
    assert "correlation_id" in metadata["properties"]

    outgoing = payload_of(document, "prod.payments.payment.completed")
    assert resolve(document, outgoing["properties"]["message"]["$ref"])["title"] == "Receipt"

    plain = payload_of(document, "plain.subject")
    assert "$ref" in plain  # other subjects stay as FastStream documents them


@pytest.mark.parametrize("version", ["3.0.0", "2.6.0"])
def test_the_dlq_channel_is_documented_with_the_record_schema(version: str) -> None:
    document = build_app(version).schema.to_specification().to_jsonable()
    record = payload_of(document, "dlq.prod.payments.>")
    schema = resolve(document, record["$ref"])
    for field in ("event_id", "reason", "original_subject", "error_type", "attempts", "envelope"):
        assert field in schema["properties"]
    if version.startswith("3."):
        assert any(
            op["action"] == "send" and "DLQ" in op["channel"]["$ref"]
            for op in document["operations"].values()
        )


def test_the_document_renders_as_json() -> None:
    specification = build_app("3.0.0").schema.to_specification()
    assert json.loads(specification.to_json())["asyncapi"] == "3.0.0"
    assert specification.title == "FastStream"


def test_faststream_docs_gen_writes_the_wrapped_document(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    completed = subprocess.run(
        [sys.executable, "-m", "faststream", "docs", "gen", "asyncapi_app:app", "--out", str(out)],
        cwd=Path(__file__).parent / "apps",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    document = json.loads(out.read_text())
    assert "DLQ_PROD_PAYMENTS:DeadLetters" in document["channels"]
    assert payload_of(document, "prod.orders.order.created")["title"] == "Envelope"


@pytest.mark.parametrize("version", ["3.0.0", "2.6.0"])
def test_the_correlation_id_points_at_the_envelopes_field(version: str) -> None:
    document = build_app(version).schema.to_specification().to_jsonable()
    for subject in ("prod.orders.order.created", "prod.payments.payment.completed"):
        message = message_of(document, subject)
        assert message["correlationId"]["location"] == "$message.payload#/metadata/correlation_id"


def test_the_health_route_is_an_http_probe_not_a_channel() -> None:
    broker = NatsBroker()
    pubsub = NatsPubsub(broker, env="prod", app="payments")

    @get
    async def ready(scope: Any) -> AsgiResponse:
        return AsgiResponse(b"", 200)

    app = AsgiFastStream(
        broker,
        asgi_routes=[("/health", pubsub.health_route()), ("/ready", ready)],
        specification=AsyncAPI(),
    )
    addresses = json.dumps(app.schema.to_specification().to_jsonable()["channels"])
    assert "/ready" in addresses  # an ordinary route is listed, so the check can fail
    assert "/health" not in addresses


def message_of(document: dict[str, Any], subject: str) -> dict[str, Any]:
    for channel in document["channels"].values():
        if channel.get("bindings", {}).get("nats", {}).get("subject") == subject:
            refs = [m["$ref"] for m in channel.get("messages", {}).values()]
            refs += [
                channel[op]["message"]["$ref"] for op in ("publish", "subscribe") if op in channel
            ]
            return dict(resolve(document, refs[0]))
    raise AssertionError(f"no channel for {subject}")
