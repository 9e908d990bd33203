"""An operator in a real browser (headless Debian Chromium, driven by Playwright).

The console runs mounted in an ``AsgiFastStream`` app on a live nats-server, whose consumer
handles what is replayed.
"""

from __future__ import annotations

from typing import Any

import pytest
from console_support import CONSOLE_TOKEN, REASONS, seed_records, seeded
from support import wait_until

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.browser]


async def logged_in(browser: Any, base_url: str) -> Any:
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(15_000)
    await page.goto(f"{base_url}/natspubsub")
    await page.get_by_label("Console token").fill(CONSOLE_TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url("**/natspubsub?view=overview")
    return page


async def test_an_operator_finds_a_record_replays_it_and_the_consumer_handles_it(
    make_console: Any, browser: Any
) -> None:
    async with make_console() as live:
        await seed_records(live.nc, live.env, live.app, 40)
        page = await logged_in(browser, live.base_url)

        # Given the overview, which counts the dead letters
        dead_letters = page.locator(".card", has_text="Dead letters")
        assert await dead_letters.locator(".card-value").inner_text() == "40"

        # When the operator filters the list by topic and reason
        await page.get_by_role("link", name="Dead letters", exact=True).click()
        await page.get_by_label("Topic").fill("order.paid")
        await page.get_by_label("Reason").select_option(REASONS[0].value)
        await page.get_by_role("button", name="Filter").click()
        expected = [
            i + 1
            for i in range(39, -1, -1)
            if seeded(i).topic == "order.paid" and seeded(i).reason == REASONS[0].value
        ]
        rows = page.locator("tbody tr")
        assert await rows.count() == len(expected)
        assert await page.locator("#summary").inner_text() == (
            f"{len(expected)} records match · showing {len(expected)}, newest first"
        )

        # and opens the newest record
        seq = expected[0]
        await page.get_by_role("link", name=str(seq), exact=True).click()
        await page.wait_for_url(f"**view=record&seq={seq}")
        event_id = f"00000000-0000-4000-8000-{seq - 1:012d}"
        assert event_id in await page.locator(".facts").inner_text()
        assert seeded(seq - 1).error in await page.locator(".error-box").inner_text()

        # and replays it, confirming in the dialog
        await page.get_by_role("link", name="Replay…").click()
        dialog = page.locator("dialog#dialog-replay")
        assert await dialog.is_visible()
        await dialog.get_by_role("button", name="Replay record").click()

        # Then the result says where the event went, and the app's consumer handled it
        await page.wait_for_url("**view=job**")
        await page.locator("#job[data-state=done]").wait_for()
        assert (
            f"record {seq} (event {event_id}) published to"
            in await page.locator("#job-results").inner_text()
        )
        await wait_until(
            lambda: [m.event_id for m in live.handled] == [event_id],
            message="the replayed event handled by the consumer",
        )
        assert live.handled[0].topic == "order.paid"
        # and the record left the DLQ
        await page.get_by_role("link", name="Back to dead letters").click()
        assert await page.get_by_role("link", name=str(seq), exact=True).count() == 0
        assert "39 records in the DLQ" in await page.locator("#summary").inner_text()


async def test_an_operator_purges_a_record_after_confirming(
    make_console: Any, browser: Any
) -> None:
    async with make_console() as live:
        await seed_records(live.nc, live.env, live.app, 3)
        page = await logged_in(browser, live.base_url)
        await page.goto(f"{live.base_url}/natspubsub?view=record&seq=2")

        # A cancelled confirmation changes nothing
        await page.get_by_role("link", name="Purge…").click()
        dialog = page.locator("dialog#dialog-purge")
        await dialog.get_by_role("button", name="Cancel").click()
        assert not await dialog.is_visible()
        info = await live.nc.jetstream().stream_info(live.dlq_stream)
        assert info.state.messages == 3

        # A confirmed one deletes the record
        await page.get_by_role("link", name="Purge…").click()
        await dialog.get_by_role("button", name="Purge record").click()
        await page.locator("#job[data-state=done]").wait_for()
        assert "record 2 deleted" in await page.locator("#job-results").inner_text()
        info = await live.nc.jetstream().stream_info(live.dlq_stream)
        assert info.state.messages == 2
        response = await page.goto(f"{live.base_url}/natspubsub?view=record&seq=2")
        assert response is not None
        assert response.status == 404
        assert live.handled == []


async def test_a_bulk_replay_shows_its_progress_and_what_was_replayed(
    make_console: Any, browser: Any
) -> None:
    async with make_console() as live:
        await seed_records(live.nc, live.env, live.app, 400)
        page = await logged_in(browser, live.base_url)
        await page.goto(f"{live.base_url}/natspubsub?view=dlq&topic=order.created")
        await page.get_by_role("link", name="Replay all…").click()
        assert await page.locator("h1").inner_text() == "Replay 100 records?"
        await page.get_by_role("button", name="Replay", exact=True).click()

        # The job page follows the progress, then shows the final counts
        await page.wait_for_url("**view=job**")
        await page.locator("#job[data-state=done]").wait_for(timeout=60_000)
        assert await page.locator("#job-succeeded").inner_text() == "100"
        assert await page.locator("#job-failed").inner_text() == "0"
        assert await page.locator("#job-progress").get_attribute("value") == "100"
        await wait_until(lambda: len(live.handled) == 100, timeout=30, message="100 replays")
        assert {m.topic for m in live.handled} == {"order.created"}
