"""Screenshots of the operations console for the docs (``docs/images/console-*.png``).

Usage: ``python scripts/console_screenshots.py [--out docs/images]``. Needs the dev extra and
Debian's Chromium at ``/usr/bin/chromium`` (the browser tests' setup: Playwright drives it with
``executable_path``). Starts a throw-away nats-server, an app whose consumer is behind and
whose DLQ holds a few hundred realistic records, mounts the console and photographs its pages.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "console")]

from console_support import CONSOLE_TOKEN, chromium, connected, live_console  # noqa: E402

from faststream_natspubsub.console import OutboxStats  # noqa: E402
from faststream_natspubsub.dlq import (  # noqa: E402
    DeadLetterReason,
    DeadLetterWriter,
    FailedDelivery,
)
from faststream_natspubsub.envelope import EnvelopeCodec  # noqa: E402
from faststream_natspubsub.subjects import dlq_stream_name, dlq_subject_prefix  # noqa: E402
from faststream_natspubsub.testing import EmbeddedNatsServer  # noqa: E402

if TYPE_CHECKING:
    from faststream_natspubsub import NatsPubsub

VIEWPORT = {"width": 1360, "height": 860}
SHOTS = ("overview", "dead-letters", "record", "confirm-dialog", "bulk-confirm", "job")


# The failing handlers, compiled under the file name an application would have, so the
# tracebacks in the screenshots look like an application's and not like this script's.
_HANDLERS = """
class PaymentDeclinedError(Exception):
    pass


class InventoryServiceError(Exception):
    pass


def charge(order, amount):
    if amount > 900:
        raise PaymentDeclinedError(f"card declined for {order}: insufficient funds ({amount} EUR)")
    raise TimeoutError(f"payment gateway did not answer within 5.0 s for {order}")


def reserve(order):
    raise InventoryServiceError(f"inventory-api returned 503 Service Unavailable for {order}")


def handle(kind, order):
    try:
        if kind in (0, 1, 2):
            charge(order, 950.0 if kind == 0 else 120.0)
        elif kind in (3, 4):
            reserve(order)
        elif kind == 5:
            raise ValueError(f"1 validation error for Order: total is not a number [{order}]")
        raise ConnectionResetError("consumer process died while handling the event")
    except Exception as exc:
        return exc
"""
_NAMESPACE: dict[str, Any] = {}
exec(compile(_HANDLERS, "/srv/billing/handlers/payments.py", "exec"), _NAMESPACE)  # noqa: S102
handle = _NAMESPACE["handle"]


def failure(i: int) -> tuple[str, str, DeadLetterReason, bytes | None, BaseException]:
    """``(source app, topic, reason, raw body or None, error)`` of the i-th record."""
    order = f"ORD-{20240 + i}"
    kind = i % 7
    error: BaseException = handle(kind, order)
    if kind == 0:
        return "shop", "payment.requested", DeadLetterReason.PERMANENT_ERROR, None, error
    if kind in (1, 2):
        return "shop", "payment.requested", DeadLetterReason.MAX_ATTEMPTS_EXCEEDED, None, error
    if kind in (3, 4):
        return "orders", "order.created", DeadLetterReason.MAX_ATTEMPTS_EXCEEDED, None, error
    if kind == 5:
        return "orders", "order.updated", DeadLetterReason.PERMANENT_ERROR, None, error
    if i % 2:
        return "orders", "order.created", DeadLetterReason.MAX_DELIVER_EXCEEDED, None, error
    return "legacy", "order.imported", DeadLetterReason.MALFORMED, b'{"order_id": "ORD-', error


async def seed(nc: Any, env: str, app: str, count: int) -> None:
    writer = DeadLetterWriter(
        app=app,
        stream=dlq_stream_name(env, app),
        subject_prefix=dlq_subject_prefix(env, app),
        codec=EnvelopeCodec(),
    )
    codec = EnvelopeCodec()
    out: list[tuple[str, bytes, dict[str, str]]] = []

    async def capture(body: bytes, subject: str, *, headers: dict[str, str], **_: Any) -> None:
        out.append((subject, body, headers))

    for i in range(count):
        source, topic, reason, raw, error = failure(i)
        envelope = {
            "event_id": f"5f0c{i:04d}-8d1e-4c2b-9a4f-0e2d1c3b{i:04d}",
            "schema_version": 1,
            "topic": topic,
            "occurred_at": "2026-12-02T09:41:07.312Z",
            "message": {
                "order_id": f"ORD-{20240 + i}",
                "total": 950.0 if i % 7 == 0 else 120.0,
                "currency": "EUR",
                "customer_id": f"C-{7000 + i % 40}",
            },
            "metadata": {
                "app_name": source,
                "environment": env,
                "correlation_id": f"req-{i:05d}",
                "trace_id": f"4bf92f3577b34da6a3ce929d0e0e{i:04d}",
            },
        }
        body = raw if raw is not None else codec.encode(envelope)[0]
        await writer.write(
            FailedDelivery(
                subject=f"{env}.{source}.{topic}",
                body=body,
                headers={"Nats-Msg-Id": envelope["event_id"], "traceparent": "00-4bf9-01"},
                stream=f"{env.upper()}_{source.upper()}",
                stream_seq=1000 + i,
                consumer=f"{app}__{topic.replace('.', '_')}",
                deliveries=1 if reason is DeadLetterReason.PERMANENT_ERROR else 5,
                reason=reason,
                error=error,
                detail="the body is not an envelope: not JSON" if raw is not None else None,
            ),
            capture,
        )
    for subject, body, headers in out:
        await nc.publish(subject, body, headers=headers)
    await nc.flush()


def slow_consumer(pubsub: NatsPubsub) -> None:
    """A consumer that falls behind, so the overview has something to show."""

    @pubsub.subscriber("stock.reserved", app="warehouse")
    async def on_stock_reserved(body: dict[str, Any]) -> None:
        await asyncio.sleep(30)


async def shoot(out: Path) -> list[Path]:
    outbox = OutboxStats(pending=12, oldest_pending_age=4.2, failed=0)
    codec = EnvelopeCodec()
    async with (
        EmbeddedNatsServer() as server,
        live_console(
            server, setup=slow_consumer, env="production", outbox=lambda: outbox, max_pending=100
        ) as live,
        chromium() as browser,
    ):
        async with connected(server.url) as nc:
            await seed(nc, live.env, live.app, 263)
            for n in range(140):
                body, _ = codec.encode(
                    {"event_id": f"stock-{n}", "topic": "stock.reserved", "message": {"n": n}}
                )
                await nc.publish(f"{live.env}.warehouse.stock.reserved", body)
            await nc.flush()
        page = await browser.new_page(viewport=VIEWPORT)
        base = f"{live.base_url}/natspubsub"
        await page.goto(base)
        await page.get_by_label("Console token").fill(CONSOLE_TOKEN)
        await page.get_by_role("button", name="Log in").click()
        await page.locator("h1", has_text="Overview").wait_for()
        await page.screenshot(path=out / "console-overview.png", full_page=True)

        await page.goto(f"{base}?view=dlq&topic=payment.*")
        await page.screenshot(path=out / "console-dead-letters.png")

        await page.goto(f"{base}?view=record&seq=1")
        await page.screenshot(path=out / "console-record.png", full_page=True)
        await page.get_by_role("link", name="Replay…").click()
        await page.screenshot(path=out / "console-confirm-dialog.png")

        await page.goto(f"{base}?view=dlq&reason=max_attempts_exceeded&source_app=orders")
        await page.get_by_role("link", name="Replay all…").click()
        await page.screenshot(path=out / "console-bulk-confirm.png")
        await page.get_by_role("button", name="Replay", exact=True).click()
        await page.locator("#job[data-state=done]").wait_for(timeout=60_000)
        await page.screenshot(path=out / "console-job.png")
    return [out / f"console-{name}.png" for name in SHOTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(shoot(out)):
        print(path)


if __name__ == "__main__":
    main()
