"""The codec example the docs include runs and does what the page says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from faststream_natspubsub.codecs import JSON_CONTENT_TYPE, PROTOBUF_CONTENT_TYPE
from faststream_natspubsub.testing import EmbeddedNatsServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the example imports its orders_pb2
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.nats
async def test_e13_a_protobuf_app_and_a_json_app_read_each_other(
    server: EmbeddedNatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load("e13_codecs", monkeypatch)

    outcome = await example.main(server.url)

    [order] = outcome.shipped_orders
    assert order == example.Order(order_id="ORD-1", customer_id="C-7", quantity=2, total=25.0)
    [audited] = outcome.audited
    assert type(audited).__name__ == "OrderPlaced"
    assert (audited.order_id, audited.quantity) == ("ORD-1", 2)
    assert outcome.delivered == [example.Shipped(order_id="ORD-1", carrier="DHL")]
    assert outcome.content_types == [PROTOBUF_CONTENT_TYPE, JSON_CONTENT_TYPE]
