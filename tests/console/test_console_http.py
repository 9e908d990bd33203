"""The console over real HTTP against a live server: auth, CSRF, idempotency, escaping, paging."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import httpx
import pytest
from console_support import (
    CONSOLE_TOKEN,
    REASONS,
    TOPICS,
    form_fields,
    login,
    record_messages,
    seed_records,
    seeded,
    seqs_on_page,
)
from support import wait_until

from faststream_natspubsub.console import ConsoleConfigError, ConsoleRequest, OutboxStats

pytestmark = pytest.mark.nats

PATH = "/natspubsub"


async def page_of(client: httpx.AsyncClient, **params: Any) -> httpx.Response:
    response = await client.get(PATH, params=params)
    assert response.status_code == 200, response.text[:500]
    return response


async def confirm_form(client: httpx.AsyncClient, **params: Any) -> dict[str, str]:
    """The hidden fields of an action's confirmation page (key, csrf, what to do)."""
    page = await page_of(client, view="confirm", **params)
    return form_fields(page.text, "do", "key", "csrf")


async def act(client: httpx.AsyncClient, fields: dict[str, str]) -> httpx.Response:
    return await client.post(PATH, data=fields)


async def job_state(client: httpx.AsyncClient, location: str) -> dict[str, Any]:
    key = re.search(r"id=([A-Za-z0-9_-]+)", location)
    assert key is not None
    response = await client.get(PATH, params={"view": "job", "id": key.group(1), "format": "json"})
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


async def finished(client: httpx.AsyncClient, location: str) -> dict[str, Any]:
    state: dict[str, Any] = {}

    async def done() -> bool:
        state.update(await job_state(client, location))
        return not state["running"]

    await wait_until(done, timeout=30, message="the action to finish")
    return state


# -- authentication ------------------------------------------------------------------------


async def test_every_page_needs_a_login_when_a_token_is_set(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        for view in ("overview", "dlq", "record", "confirm", "job"):
            response = await client.get(PATH, params={"view": view, "seq": "1"})
            assert response.status_code == 303
            assert response.headers["location"].startswith("?view=login")


async def test_a_wrong_token_is_refused_and_the_right_one_opens_a_session(
    make_console: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_console() as live, live.client() as client:
        caplog.set_level(logging.INFO, logger="faststream_natspubsub.console")
        wrong = await login(client, token="not-the-token-at-all-000")
        assert wrong.status_code == 401
        assert "wrong token" in wrong.text
        assert (await client.get(PATH)).status_code == 303

        right = await login(client)
        assert right.status_code == 303
        assert right.headers["location"] == "?view=dlq"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert f"Path={PATH}" in cookie
        assert (await client.get(PATH)).status_code == 200
    assert "failed login" in caplog.text
    assert "operator logged in" in caplog.text


async def test_a_bearer_token_works_without_a_session(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        headers = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}
        assert (await client.get(PATH, headers=headers)).status_code == 200
        bad = {"Authorization": "Bearer wrong-token-wrong-token"}
        assert (await client.get(PATH, headers=bad)).status_code == 303


async def test_a_tampered_session_cookie_is_not_a_login(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        response = await login(client)
        value = response.cookies["natspubsub_console_session"]
        body, _, signature = value.partition(".")
        forged = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + signature
        client.cookies.set("natspubsub_console_session", forged, path=PATH)
        assert (await client.get(PATH)).status_code == 303


async def test_named_tokens_say_who_acted(
    make_console: Any, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = "alice-token-0123456789abcdef", "bob-token-0123456789abcdefgh"
    async with make_console(token={"alice": alice, "bob": bob}) as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 1)
        caplog.set_level(logging.INFO, logger="faststream_natspubsub.console")
        await login(client, token=bob)
        page = await page_of(client)
        assert '<span class="operator">bob</span>' in page.text
        response = await act(client, await confirm_form(client, action="purge", seq=1))
        assert (await finished(client, response.headers["location"]))["succeeded"] == 1
    assert re.search(r"bob started purge of record 1 \(key [\w-]+\) from 127\.0\.0\.1", caplog.text)
    assert "bob purged record 1" in caplog.text


async def test_an_auth_function_decides_who_may_see_and_act(
    make_console: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[ConsoleRequest] = []

    async def from_proxy(request: ConsoleRequest) -> str | None:
        seen.append(request)
        return request.headers.get("x-forwarded-user")

    async with make_console(token=None, auth=from_proxy) as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 1)
        caplog.set_level(logging.INFO, logger="faststream_natspubsub.console")
        assert (await client.get(PATH)).status_code == 401
        client.headers["X-Forwarded-User"] = "carol"
        assert (await client.get(PATH)).status_code == 200
        response = await act(client, await confirm_form(client, action="purge", seq=1))
        assert response.status_code == 303
        await finished(client, response.headers["location"])
    assert seen[-1].path == PATH
    assert "carol started purge of record 1" in caplog.text


async def test_actions_cannot_be_enabled_without_authentication(make_console: Any) -> None:
    with pytest.raises(ConsoleConfigError, match="needs token= or auth="):
        async with make_console(token=None, actions=True):
            pass


async def test_a_read_only_console_shows_no_action_and_refuses_one(make_console: Any) -> None:
    async with make_console(token=None, actions=False) as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 3)
        listing = await page_of(client, view="dlq")
        record = await page_of(client, view="record", seq=1)
        assert "read-only" in listing.text
        for page in (listing, record):
            assert "Replay…" not in page.text
            assert "Purge…" not in page.text
            assert "Replay all" not in page.text
            assert 'method="post"' not in page.text
        confirm = await client.get(PATH, params={"view": "confirm", "action": "purge", "seq": 1})
        assert confirm.status_code == 403
        # Even a form with a valid CSRF token (made from the browser's cookie) is refused.
        csrf = live.console.auth.csrf_token(client.cookies["natspubsub_console_csrf"])
        fields = {"do": "action", "kind": "purge", "seq": "1", "key": "k" * 20, "csrf": csrf}
        refused = await act(client, fields)
        assert refused.status_code == 403
        assert "read-only" in refused.text
        info = await live.nc.jetstream().stream_info(live.dlq_stream)
        assert info.state.messages == 3


# -- CSRF ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tamper",
    ["no token", "wrong token", "token of another browser", "other origin", "cross-site fetch"],
)
async def test_an_action_without_a_valid_csrf_token_is_refused_and_changes_nothing(
    make_console: Any, tamper: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 2)
        await login(client)
        fields = await confirm_form(client, action="purge", seq=1)
        headers: dict[str, str] = {}
        if tamper == "no token":
            del fields["csrf"]
        elif tamper == "wrong token":
            fields["csrf"] = fields["csrf"][:-4] + "AAAA"
        elif tamper == "token of another browser":
            async with live.client() as other:
                await login(other)
                fields["csrf"] = (await confirm_form(other, action="purge", seq=1))["csrf"]
        elif tamper == "other origin":
            headers["Origin"] = "https://evil.example"
        else:
            headers["Sec-Fetch-Site"] = "cross-site"
        caplog.set_level(logging.WARNING, logger="faststream_natspubsub.console")
        response = await client.post(PATH, data=fields, headers=headers)
        assert response.status_code == 403
        assert "CSRF check failed" in response.text
        info = await live.nc.jetstream().stream_info(live.dlq_stream)
        assert info.state.messages == 2
    assert "CSRF check failed" in caplog.text


async def test_the_same_origin_with_a_valid_token_is_accepted(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 1)
        await login(client)
        fields = await confirm_form(client, action="purge", seq=1)
        response = await client.post(
            PATH,
            data=fields,
            headers={"Origin": live.base_url, "Sec-Fetch-Site": "same-origin"},
        )
        assert response.status_code == 303


async def test_a_login_form_needs_its_csrf_token_too(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        await client.get(PATH, params={"view": "login"})
        response = await client.post(PATH, data={"do": "login", "token": CONSOLE_TOKEN})
        assert response.status_code == 403
        assert "natspubsub_console_session" not in response.headers.get("set-cookie", "")


# -- idempotency -----------------------------------------------------------------------------


async def test_a_resent_action_is_not_run_again(
    make_console: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 3)
        await login(client)
        caplog.set_level(logging.INFO, logger="faststream_natspubsub.console")
        fields = await confirm_form(client, action="replay", seq=1)

        first = await act(client, fields)
        second = await act(client, fields)  # the browser or a proxy retries the request

        assert first.headers["location"] == second.headers["location"]
        state = await finished(client, first.headers["location"])
        assert (state["succeeded"], state["failed"]) == (1, 0)
        await wait_until(lambda: len(live.handled) == 1, message="the replayed event")
    assert caplog.text.count("started replay of record 1") == 1
    assert "sent replay of record 1 again" in caplog.text
    assert len(live.handled) == 1


async def test_a_double_click_replays_once(
    make_console: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 12)
        await login(client)
        caplog.set_level(logging.INFO, logger="faststream_natspubsub.console")
        upto = (await live.nc.jetstream().stream_info(live.dlq_stream)).state.last_seq
        fields = await confirm_form(client, action="replay", topic="order.created", upto=upto)

        responses = await asyncio.gather(act(client, fields), act(client, fields))

        assert {r.headers["location"] for r in responses} == {responses[0].headers["location"]}
        state = await finished(client, responses[0].headers["location"])
        assert (state["total"], state["succeeded"], state["failed"]) == (3, 3, 0)
        await wait_until(lambda: len(live.handled) == 3, message="three replayed events")
    assert caplog.text.count("started replay of records") == 1
    assert len(live.handled) == 3


async def test_a_key_used_for_one_action_cannot_start_another(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 2)
        await login(client)
        fields = await confirm_form(client, action="purge", seq=1)
        assert (await act(client, fields)).status_code == 303
        fields["seq"] = "2"
        conflict = await act(client, fields)
        assert conflict.status_code == 409
        assert (await live.nc.jetstream().stream_info(live.dlq_stream)).state.messages == 1


async def test_consoles_sharing_a_kv_store_run_a_key_once(
    make_console: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = b"one-secret-for-every-console-process"
    async with make_console(idempotency="kv", secret=secret) as live:
        other = live.pubsub.console(
            token=CONSOLE_TOKEN, actions=True, idempotency="kv", secret=secret
        )
        await seed_records(live.nc, live.env, live.app, 2)
        caplog.set_level(logging.INFO, logger="faststream_natspubsub.console")
        async with live.client() as client:
            await login(client)
            fields = await confirm_form(client, action="purge", seq=1)
            first = await act(client, fields)
            assert (await finished(client, first.headers["location"]))["succeeded"] == 1
        # The same form reaches another process serving the console.
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url=live.base_url) as elsewhere:
            elsewhere.cookies.update(client.cookies)
            second = await elsewhere.post(PATH, data=fields)
            assert second.status_code == 303
            page = await elsewhere.get(PATH + second.headers["location"])
            assert "in another console process" in page.text
            assert "Purge of record 1" in page.text
    assert caplog.text.count("started purge of record 1") == 1
    assert "sent purge of record 1 again" in caplog.text


# -- what the pages show ---------------------------------------------------------------------


def older_cursor(html: str) -> str | None:
    found = re.search(r'href="\?([^"]*before=\d+[^"]*)" rel="next"', html)
    return found.group(1).replace("&amp;", "&") if found else None


async def walk(client: httpx.AsyncClient, **params: Any) -> list[list[int]]:
    """Every page of the list from the newest, following the Older links."""
    pages = []
    response = await page_of(client, view="dlq", **params)
    while True:
        pages.append(seqs_on_page(response.text))
        cursor = older_cursor(response.text)
        if cursor is None:
            return pages
        response = await client.get(PATH + "?" + cursor)
        assert response.status_code == 200


async def test_pages_list_every_record_once_newest_first(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 230)
        await login(client)
        pages = await walk(client)
        assert [len(p) for p in pages] == [50, 50, 50, 50, 30]
        assert [s for p in pages for s in p] == list(range(230, 0, -1))
        # and back: the Newer link of the last page leads to the one before it
        last = await page_of(client, view="dlq", before=pages[-2][-1])
        newer = re.search(r'href="\?view=dlq&amp;after=(\d+)"', last.text)
        assert newer is not None
        back = await page_of(client, view="dlq", after=newer.group(1))
        assert seqs_on_page(back.text) == pages[-2]
        assert "230 records in the DLQ" in (await page_of(client, view="dlq")).text


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"reason": REASONS[1].value}, lambda s: s.reason == REASONS[1].value),
        ({"topic": "order.*"}, lambda s: s.topic.startswith("order.")),
        ({"topic": "payment.captured"}, lambda s: s.topic == "payment.captured"),
        ({"source_app": "orders", "topic": ">"}, lambda s: True),
        ({"q": "TIMEOUT talking"}, lambda s: "timeout" in s.error),
        (
            {"topic": "order.paid", "reason": REASONS[0].value, "q": "declined"},
            lambda s: (
                s.topic == "order.paid" and s.reason == REASONS[0].value and "declined" in s.error
            ),
        ),
    ],
    ids=["reason", "topic-wildcard", "topic", "source-app", "text", "combined"],
)
async def test_filters_list_exactly_the_matching_records(
    make_console: Any, params: dict[str, str], expected: Any
) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 160)
        await login(client)
        want = [i + 1 for i in range(159, -1, -1) if expected(seeded(i))]
        pages = await walk(client, **params)
        assert [s for p in pages for s in p] == want
        if "q" not in params:
            first = await page_of(client, view="dlq", **params)
            assert f"{len(want)} records match" in first.text


async def test_a_time_range_is_the_time_the_server_stored_the_record(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        js = live.nc.jetstream()
        await seed_records(live.nc, live.env, live.app, 5)
        await seed_records(live.nc, live.env, live.app, 5, start=5)
        last_of_first = (await js.get_msg(live.dlq_stream, seq=5)).time
        first_of_second = (await js.get_msg(live.dlq_stream, seq=6)).time
        assert last_of_first is not None
        assert first_of_second is not None
        await login(client)
        since = await walk(client, since=first_of_second.isoformat())
        until = await walk(client, until=last_of_first.isoformat())
        assert [s for p in since for s in p] == [10, 9, 8, 7, 6]
        assert [s for p in until for s in p] == [5, 4, 3, 2, 1]


async def test_a_bad_filter_says_what_is_wrong(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        await login(client)
        for params, text in (({"topic": "a..b"}, "topic:"), ({"since": "yesterday"}, "since:")):
            response = await client.get(PATH, params={"view": "dlq", **params})
            assert response.status_code == 400
            assert text in response.text


HOSTILE = "<script>alert(1)</script>"


async def test_every_record_field_is_escaped(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 1)
        subject, body, headers = (await record_messages(live.env, live.app, 1))[0]
        record = json.loads(body)
        record.update(
            reason="<b>bold</b>",
            error_type='<img src=x onerror="alert(1)">',
            error_message=HOSTILE + "\x1b[31m red \u202e evil",
            traceback="</pre>" + HOSTILE,
            event_id='"><script>alert(2)</script>',
            headers={"X-Evil": "\x1b]0;title\x07</td>" + HOSTILE, HOSTILE: "name"},
        )
        record["envelope"]["message"] = {"note": "</pre>" + HOSTILE}
        headers.update(
            {"x-dlq-reason": "<b>bold</b>", "x-event-id": HOSTILE, "Nats-Msg-Id": "hostile"}
        )
        evil_subject = subject.replace(".orders.", ".<svg/onload=alert(3)>.")
        await live.nc.publish(evil_subject, json.dumps(record).encode(), headers=headers)
        await live.nc.flush()
        await wait_until(lambda: _messages(live, 2), message="the hostile record stored")
        await login(client)
        pages = [
            await page_of(client, view="dlq"),
            await page_of(client, view="record", seq=2),
            await page_of(client, view="overview"),
        ]
        for page in pages:
            text = page.text
            assert "<script>alert" not in text
            assert "<img src=x" not in text
            assert "<svg" not in text
            assert "<b>bold</b>" not in text
        record_page = pages[1].text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in record_page
        assert "\\x1b[31m red \\u202e evil" in record_page
        assert "\\x1b]0;title\\x07&lt;/td&gt;" in record_page
        assert "\x1b" not in record_page
        assert "reason-other" in pages[0].text


async def test_an_unreadable_record_is_shown_raw_and_can_only_be_purged(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 1)
        subject = f"dlq.{live.env}.billing.orders.order.created"
        await live.nc.publish(subject, b"\xff\xfe not json " + HOSTILE.encode())
        await live.nc.publish(subject, json.dumps({"reason": "x", "attempts": "many"}).encode())
        await live.nc.flush()
        await login(client)
        await wait_until(lambda: _messages(live, 3), message="three messages stored")
        listing = await page_of(client, view="dlq")
        assert listing.text.count('class="badge reason-unreadable"') == 2
        assert "not JSON" in listing.text
        assert "not a dead-letter record" in listing.text
        for seq in (2, 3):
            page = await page_of(client, view="record", seq=seq)
            assert "not a dead-letter record" in page.text
            assert "Replay…" not in page.text
            assert "Purge…" in page.text
            assert "<script>" not in page.text


async def _messages(live: Any, count: int) -> bool:
    info = await live.nc.jetstream().stream_info(live.dlq_stream)
    return bool(info.state.messages == count)


# -- actions ---------------------------------------------------------------------------------


async def test_replaying_a_filtered_set_publishes_each_event_to_the_consumer(
    make_console: Any,
) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 30)
        await login(client)
        listing = await page_of(client, view="dlq", topic="order.created")
        assert "All matching 8 records" in listing.text
        confirm = await page_of(
            client, view="confirm", action="replay", topic="order.created", upto=30
        )
        assert "Replay 8 records?" in confirm.text
        fields = form_fields(confirm.text, "do", "key", "csrf")
        # a record stored after the operator looked is not part of the action
        await seed_records(live.nc, live.env, live.app, 4, start=30)

        response = await act(client, fields)

        state = await finished(client, response.headers["location"])
        assert (state["total"], state["succeeded"], state["failed"]) == (8, 8, 0)
        await wait_until(lambda: len(live.handled) == 8, message="8 replayed events handled")
        ids = sorted(m.event_id for m in live.handled)
        assert ids == [f"00000000-0000-4000-8000-{i:012d}" for i in range(0, 30, 4)]
        assert all(m.topic == "order.created" for m in live.handled)
        remaining = await walk(client, topic="order.created")
        assert [s for p in remaining for s in p] == [33]
        job = await client.get(PATH + response.headers["location"])
        assert "Done" in job.text


async def test_a_replay_that_fails_is_shown_and_keeps_the_record(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        # "ghost" has no stream: publishing its subject finds no responders
        await seed_records(live.nc, live.env, live.app, 1, source_app="ghost")
        await login(client)
        fields = await confirm_form(client, action="replay", seq=1)
        state = await finished(client, (await act(client, fields)).headers["location"])
        assert (state["succeeded"], state["failed"]) == (0, 1)
        assert state["failures"][0]["seq"] == 1
        page = await page_of(client, view="job", id=state["key"])
        assert "Failures" in page.text
        assert (await live.nc.jetstream().stream_info(live.dlq_stream)).state.messages == 1


@pytest.mark.parametrize(
    ("params", "kept"),
    [
        ({"topic": "order.paid"}, lambda s: s.topic != "order.paid"),
        ({"reason": REASONS[2].value}, lambda s: s.reason != REASONS[2].value),
        ({"q": "timeout"}, lambda s: "timeout" not in s.error),
        ({}, lambda s: False),
    ],
    ids=["by-subject", "by-reason", "by-text", "everything"],
)
async def test_purging_a_filtered_set_deletes_exactly_it(
    make_console: Any, params: dict[str, str], kept: Any
) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 40)
        await login(client)
        fields = await confirm_form(client, action="purge", upto=40, **params)
        state = await finished(client, (await act(client, fields)).headers["location"])
        assert state["failed"] == 0
        remaining = await walk(client)
        assert [s for p in remaining for s in p] == [
            i + 1 for i in range(39, -1, -1) if kept(seeded(i))
        ]
        info = await live.nc.jetstream().stream_info(live.dlq_stream)
        assert info.state.messages == sum(1 for i in range(40) if kept(seeded(i)))


async def test_purging_one_record_removes_it_from_pages_and_counts(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 3)
        await login(client)
        fields = await confirm_form(client, action="purge", seq=2)
        state = await finished(client, (await act(client, fields)).headers["location"])
        assert state["results"] == ["record 2 deleted"]
        assert seqs_on_page((await page_of(client, view="dlq")).text) == [3, 1]
        assert (await client.get(PATH, params={"view": "record", "seq": 2})).status_code == 404
        assert "2 records in the DLQ" in (await page_of(client, view="dlq")).text


async def test_a_long_first_index_build_shows_its_progress_then_the_page(
    make_console: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faststream_natspubsub.console import app as console_app

    monkeypatch.setattr(console_app, "INDEX_WAIT", 0.0001)
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 2000)
        await login(client)
        first = await client.get(PATH, params={"view": "dlq"})
        assert first.status_code == 200
        assert "Reading the dead-letter queue" in first.text
        assert '<meta http-equiv="refresh" content="1">' in first.text
        # the build went on in the background; a patient request gets the page
        monkeypatch.setattr(console_app, "INDEX_WAIT", 60.0)
        listing = await page_of(client, view="dlq")
        assert "2,000 records in the DLQ" in listing.text


# -- overview, outbox, mounting ----------------------------------------------------------------


async def test_the_overview_counts_dead_letters_by_reason_and_topic(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 32)
        await login(client)
        page = (await page_of(client)).text
        for reason in REASONS:
            assert re.search(rf">{reason.value}</span></a></td><td class=\"num\">8<", page)
        for topic in TOPICS:
            assert re.search(rf">{re.escape(topic)}</a></td><td class=\"num\">8<", page)
        assert "billing__" in page  # the app's consumer
        assert f"DLQ_{live.env.upper()}_BILLING" in page
        assert "Outbox" not in page


async def test_the_overview_shows_the_outbox_of_a_provider(make_console: Any) -> None:
    class StandInOutbox:
        async def outbox_stats(self) -> OutboxStats:
            return OutboxStats(pending=1234, oldest_pending_age=95.0, failed=2)

    async with make_console(outbox=StandInOutbox()) as live, live.client() as client:
        await login(client)
        page = (await page_of(client)).text
        assert "Outbox pending" in page
        assert "1,234" in page
        assert "oldest pending 1 min · 2 failed" in page
        assert "tone-bad" in page


async def test_a_broken_outbox_provider_does_not_break_the_overview(make_console: Any) -> None:
    def broken() -> OutboxStats:
        raise RuntimeError("database down <b>")

    async with make_console(outbox=broken) as live, live.client() as client:
        await login(client)
        page = (await page_of(client)).text
        assert "unavailable" in page
        assert "RuntimeError: database down &lt;b&gt;" in page


async def test_links_are_relative_to_the_mount_path(make_console: Any) -> None:
    async with make_console() as live, live.client() as client:
        await seed_records(live.nc, live.env, live.app, 2)
        await login(client)
        for view in ("overview", "dlq"):
            page = (await page_of(client, view=view)).text
            assert re.findall(r'(?:href|src|action)="(/[^"]*)"', page) == []
        css = await client.get(PATH, params={"asset": "console.css"})
        assert css.status_code == 200
        assert css.headers["content-type"] == "text/css"
        assert (await client.get("/other")).status_code == 404


async def test_pages_say_so_while_the_broker_is_not_connected(server: Any) -> None:
    from faststream.nats import NatsBroker

    from faststream_natspubsub import NatsPubsub

    pubsub = NatsPubsub(NatsBroker(server.url, logger=None), env="dev", app="billing")
    console = pubsub.console(token=CONSOLE_TOKEN)
    transport = httpx.ASGITransport(app=console)
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        response = await client.get("/", headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"})
    assert response.status_code == 503
    assert "not connected" in response.text or "no NATS connection" in response.text


def test_responses_forbid_framing_and_inline_scripts() -> None:
    from faststream_natspubsub.console.http import SECURITY_HEADERS

    headers = dict(SECURITY_HEADERS)
    assert b"script-src 'self'" in headers[b"content-security-policy"]
    assert b"frame-ancestors 'none'" in headers[b"content-security-policy"]
    assert headers[b"x-frame-options"] == b"DENY"
