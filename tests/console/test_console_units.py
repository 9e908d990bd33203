"""Console parts that need no server: escaping, sessions, CSRF, keys, filters, the outbox hook."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from faststream_natspubsub.console import (
    ConsoleConfigError,
    ConsoleRequest,
    DeadLetterFilter,
    MemoryIdempotencyStore,
    OutboxStats,
)
from faststream_natspubsub.console.html import Html, escape, escape_block, render, url
from faststream_natspubsub.console.outbox import read_outbox_stats
from faststream_natspubsub.console.pages import PageContext, record_page
from faststream_natspubsub.console.query import FilterError, LoadedRecord, _loaded
from faststream_natspubsub.console.security import Authenticator, same_origin

TOKEN = "a-console-token-of-some-length"


# -- escaping ------------------------------------------------------------------------------


def test_markup_in_a_value_is_escaped() -> None:
    assert escape("<script>alert('x')</script>") == (
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    )
    assert escape('" onmouseover="x') == "&quot; onmouseover=&quot;x"


def test_hidden_and_control_characters_are_shown_not_sent() -> None:
    text = "a\x1b[31mb\x00c\u202ed\u200be\x85f\ud800g\nh\ti"
    assert escape(text) == "a\\x1b[31mb\\x00c\\u202ed\\u200be\\x85f\\ud800g\\x0ah\\x09i"
    # a block keeps its lines and tabs
    assert escape_block(text).endswith("g\nh\ti")
    # what is sent can always be encoded
    render("<p>{t}</p>", t=text).encode("utf-8")


def test_render_escapes_values_but_not_markup_built_before() -> None:
    inner = render("<b>{x}</b>", x="<i>")
    assert render("<p>{a}{b}</p>", a=inner, b="<i>") == "<p><b>&lt;i&gt;</b>&lt;i&gt;</p>"
    assert isinstance(inner, Html)


def test_urls_are_query_only_and_drop_empty_values() -> None:
    assert url({"view": "dlq", "topic": "a&b", "q": "", "x": None}) == "?view=dlq&topic=a%26b"


def test_very_long_values_are_cut() -> None:
    assert len(escape("x" * 500_000)) < 100_100


def ctx(**overrides: Any) -> PageContext:
    values: dict[str, Any] = {
        "env": "dev",
        "app": "billing",
        "operator": "alice",
        "csrf": "c" * 20,
        "actions": True,
        "login": True,
        "asset_version": "v1",
    }
    values.update(overrides)
    return PageContext(**values)


def test_a_hostile_record_page_renders_escaped() -> None:
    body = (
        b'{"event_id": "<script>1</script>", "reason": "<b>x</b>", "original_subject": "a.b.c",'
        b' "original_stream": null, "original_seq": null, "consumer": "<i>",'
        b' "headers": {"<h>": "\\u001b[2J"}, "envelope": {"message": "</pre><script>2</script>",'
        b' "metadata": {"replay_count": "<u>", "dlq_replay": {"replayed_at": "<s>"}}},'
        b' "raw_base64": null, "error_type": ["<list>"], "error_message": {"<k>": 1},'
        b' "traceback": "</details><script>3</script>", "attempts": "<n>",'
        b' "first_failure_at": null, "last_failure_at": "<t>", "dead_lettered_at": "<t>",'
        b' "app": "<a>", "host": "<h>"}'
    )
    loaded = _loaded(7, "dlq.dev.billing.<x>.y", None, {"x-dlq-reason": "<r>"}, body)
    assert loaded.record is None  # wrong field types: the record reader refuses it
    assert loaded.problem is not None
    assert "is a list, not a string" in loaded.problem
    page = record_page(ctx(), loaded, others=[7, 9], key="k" * 20)
    assert "<script>" not in page
    assert "<b>x</b>" not in page
    assert "<list>" not in page


def test_a_readable_record_with_hostile_strings_renders_escaped() -> None:
    body = (
        b'{"event_id": "<script>1</script>", "reason": "<b>x</b>", "original_subject": "a.b.c",'
        b' "original_stream": null, "original_seq": null, "consumer": "<i>",'
        b' "headers": {"<h>": "\\u001b[2J"}, "envelope": {"message": "</pre><script>2</script>",'
        b' "metadata": {"replay_count": "<u>", "dlq_replay": {"replayed_at": "<s>"}}},'
        b' "raw_base64": null, "error_type": "<list>", "error_message": "<k>",'
        b' "traceback": "</details><script>3</script>", "attempts": 3,'
        b' "first_failure_at": null, "last_failure_at": "2025-01-17T10:30:00Z",'
        b' "dead_lettered_at": "2025-01-17T10:30:00Z", "app": "<a>", "host": "<h>"}'
    )
    loaded = _loaded(7, "dlq.dev.billing.<x>.y", None, {"x-dlq-reason": "<r>"}, body)
    assert loaded.record is not None
    page = record_page(ctx(), loaded, others=[7, 9], key="k" * 20)
    assert "<script>" not in page
    assert "<b>x</b>" not in page
    assert "<list>" not in page
    assert "\\x1b[2J" in page
    assert '<a href="?view=record&amp;seq=9">9</a>' in page


def test_a_body_that_is_no_record_renders_as_raw_text() -> None:
    loaded = _loaded(3, "dlq.dev.billing.a.b", None, {}, b"\x00\xff<script>x</script>")
    assert loaded.record is None
    page = record_page(ctx(), loaded, others=[], key="k" * 20)
    assert "not a dead-letter record" in page
    assert "&lt;script&gt;" in page
    assert "Replay…" not in page
    assert "Purge…" in page


def test_a_read_only_page_has_no_action() -> None:
    loaded: LoadedRecord = _loaded(3, "dlq.dev.billing.a.b", None, {}, b"junk")
    assert "Purge…" not in record_page(ctx(actions=False), loaded, others=[], key="k" * 20)


# -- filters -------------------------------------------------------------------------------


def test_a_filter_survives_its_own_url() -> None:
    flt = DeadLetterFilter.from_query(
        {
            "topic": " Order.* ",
            "source_app": "Shop EU",
            "reason": "malformed",
            "since": "2025-01-17T10:30:00.123456Z",
            "until": "2025-01-18",
            "q": "timeout",
        }
    )
    assert flt.topic == "order.*"
    assert flt.source_app == "shop-eu"
    assert flt.since == datetime(2025, 1, 17, 10, 30, 0, 123456, tzinfo=timezone.utc)
    assert DeadLetterFilter.from_query(flt.to_query()) == flt
    assert flt.subject_pattern("dlq.dev.billing") == "dlq.dev.billing.shop-eu.order.*"
    assert DeadLetterFilter().subject_pattern("dlq.dev.billing") == "dlq.dev.billing.>"
    assert not DeadLetterFilter().active


@pytest.mark.parametrize(
    ("params", "field"),
    [({"topic": "a..b"}, "topic"), ({"since": "soon"}, "since"), ({"until": "1x"}, "until")],
)
def test_a_bad_filter_value_names_its_field(params: dict[str, str], field: str) -> None:
    with pytest.raises(FilterError, match=f"^{field}:"):
        DeadLetterFilter.from_query(params)


# -- authentication, sessions, CSRF ----------------------------------------------------------


def request(**overrides: Any) -> ConsoleRequest:
    values: dict[str, Any] = {
        "method": "POST",
        "path": "/natspubsub",
        "query": {},
        "headers": {"host": "ops.example:8000"},
        "cookies": {},
        "client": "10.0.0.1:5000",
        "scheme": "http",
    }
    values.update(overrides)
    return ConsoleRequest(**values)


async def test_a_session_cookie_names_its_operator_until_it_expires() -> None:
    auth = Authenticator(token={"alice": TOKEN}, auth=None, secret=None, session_seconds=60)
    cookie = auth.session_cookie("alice")
    assert await auth.identify(request(cookies={"natspubsub_console_session": cookie})) == "alice"
    other = Authenticator(token={"alice": TOKEN}, auth=None, secret=None)
    assert await other.identify(request(cookies={"natspubsub_console_session": cookie})) is None
    expired = Authenticator(token={"alice": TOKEN}, auth=None, secret=b"s" * 32, session_seconds=-1)
    old = expired.session_cookie("alice")
    assert await expired.identify(request(cookies={"natspubsub_console_session": old})) is None


async def test_a_session_of_a_removed_operator_is_refused() -> None:
    secret = b"shared-secret-shared-secret"
    before = Authenticator(token={"bob": TOKEN}, auth=None, secret=secret)
    after = Authenticator(token={"alice": TOKEN}, auth=None, secret=secret)
    cookie = before.session_cookie("bob")
    assert await after.identify(request(cookies={"natspubsub_console_session": cookie})) is None


def test_tokens_are_checked_in_constant_time_and_name_their_operator() -> None:
    auth = Authenticator(token={"alice": TOKEN, "bob": TOKEN + "-b"}, auth=None, secret=None)
    assert auth.check_token(TOKEN) == "alice"
    assert auth.check_token(TOKEN + "-b") == "bob"
    assert auth.check_token(TOKEN[:-1]) is None
    assert auth.check_token("") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": "short", "auth": None}, "at least 16"),
        ({"token": TOKEN, "auth": lambda r: "x"}, "not both"),
        ({"token": {}, "auth": None}, "names no operator"),
    ],
)
def test_unsafe_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConsoleConfigError, match=message):
        Authenticator(secret=None, **kwargs)


def test_a_csrf_token_belongs_to_its_cookie_and_secret() -> None:
    auth = Authenticator(token=TOKEN, auth=None, secret=b"x" * 32)
    cookie = auth.new_csrf_cookie()
    token = auth.csrf_token(cookie)
    assert auth.csrf_ok(cookie, token)
    assert not auth.csrf_ok(auth.new_csrf_cookie(), token)
    assert not auth.csrf_ok(None, token)
    assert not auth.csrf_ok(cookie, None)
    assert not Authenticator(token=TOKEN, auth=None, secret=b"y" * 32).csrf_ok(cookie, token)


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"host": "ops.example:8000"}, True),
        ({"host": "ops.example:8000", "origin": "http://ops.example:8000"}, True),
        ({"host": "ops.example:8000", "origin": "https://ops.example:8000"}, True),
        ({"host": "ops.example:8000", "origin": "https://evil.example"}, False),
        ({"host": "ops.example:8000", "origin": "null"}, False),
        ({"host": "ops.example:8000", "sec-fetch-site": "cross-site"}, False),
        (
            {
                "host": "internal:80",
                "x-forwarded-host": "ops.example",
                "origin": "https://ops.example",
            },
            True,
        ),
    ],
)
def test_a_form_from_another_site_is_told_apart(headers: dict[str, str], ok: bool) -> None:
    assert same_origin(request(headers=headers)) is ok


async def test_an_auth_function_may_be_sync_or_async() -> None:
    def sync(r: ConsoleRequest) -> str | None:
        return r.headers.get("x-user")

    async def asynchronous(r: ConsoleRequest) -> str | None:
        return r.headers.get("x-user")

    for check in (sync, asynchronous):
        auth = Authenticator(token=None, auth=check, secret=None)
        assert await auth.identify(request(headers={"x-user": "dana"})) == "dana"
        assert await auth.identify(request()) is None


async def test_an_auth_function_that_fails_refuses_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(r: ConsoleRequest) -> str | None:
        raise RuntimeError("directory unreachable")

    auth = Authenticator(token=None, auth=broken, secret=None)
    assert await auth.identify(request(headers={"x-user": "dana"})) is None
    assert "the auth function failed" in caplog.text


# -- idempotency keys ----------------------------------------------------------------------


async def test_a_key_is_claimed_once_and_keeps_its_first_value() -> None:
    store = MemoryIdempotencyStore()
    assert await store.claim("k1", b"first") is None
    assert await store.claim("k1", b"second") == b"first"
    await store.update("k1", b"done")
    assert await store.get("k1") == b"done"
    assert await store.claim("k1", b"third") == b"done"


async def test_keys_expire_and_the_store_stays_bounded() -> None:
    now = [100.0]
    store = MemoryIdempotencyStore(ttl=60, max_keys=3, clock=lambda: now[0])
    for key in ("a", "b", "c", "d"):
        assert await store.claim(key, b"x") is None
    assert await store.get("a") is None  # the oldest went first
    now[0] += 61
    assert await store.get("d") is None
    assert await store.claim("d", b"y") is None


# -- the outbox hook -------------------------------------------------------------------------


async def test_an_outbox_provider_may_be_a_function_or_an_object_sync_or_async() -> None:
    stats = OutboxStats(pending=3, oldest_pending_age=1.5, failed=0)

    class Provider:
        async def outbox_stats(self) -> OutboxStats:
            return stats

    async def function() -> OutboxStats:
        return stats

    for provider in (Provider(), function, lambda: stats):
        assert await read_outbox_stats(provider) == stats


async def test_an_outbox_provider_must_answer_with_stats() -> None:
    with pytest.raises(TypeError, match="must return OutboxStats"):
        await read_outbox_stats(lambda: {"pending": 1})  # type: ignore[arg-type,return-value]


# -- the browser tests' own guard --------------------------------------------------------------


async def test_a_missing_chromium_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    import console_support

    monkeypatch.setattr(console_support, "CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(console_support.BrowserUnavailableError, match="install"):
        async with console_support.chromium():
            pass
