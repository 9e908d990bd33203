"""The fetch window: how many messages a subscriber holds, from its handlers' pace."""

from __future__ import annotations

import pytest

from faststream_natspubsub.fetching import (
    MAX_PREFETCH,
    REQUEST_EXPIRES,
    FetchWindow,
    request_expiry,
)


def test_before_any_handler_ended_a_few_messages_are_fetched_ahead() -> None:
    window = FetchWindow(workers=1, ack_wait=30.0)
    assert window.service_time is None
    assert 1 <= window.prefetch <= 16
    assert window.size == 1 + window.prefetch


def test_a_fast_handler_gets_the_deepest_window() -> None:
    # Given handlers that take 100 µs: a second of work is 10,000 messages
    window = FetchWindow(workers=1, ack_wait=30.0)
    window.handled(0.0001)
    # Then the prefetch is capped
    assert window.prefetch == MAX_PREFETCH
    assert window.size == 1 + MAX_PREFETCH


def test_a_slow_handler_fetches_what_it_finishes_within_the_horizon() -> None:
    # Given one worker whose handler takes 50 ms: a second of work is 20 messages
    window = FetchWindow(workers=1, ack_wait=30.0)
    window.handled(0.05)
    assert window.prefetch == 20
    # And with 4 such workers, four times that
    window = FetchWindow(workers=4, ack_wait=30.0)
    window.handled(0.05)
    assert window.prefetch == 80


def test_a_handler_slower_than_the_horizon_still_has_one_message_waiting() -> None:
    window = FetchWindow(workers=1, ack_wait=30.0)
    window.handled(5.0)
    assert window.prefetch == 1
    assert window.size == 2


def test_a_short_ack_wait_shortens_the_horizon() -> None:
    # ack_wait 2 s: at most a tenth of it (0.2 s) of work waits in the client
    window = FetchWindow(workers=1, ack_wait=2.0)
    window.handled(0.01)
    assert window.prefetch == 20


def test_the_pace_is_a_moving_average() -> None:
    window = FetchWindow(workers=1, ack_wait=30.0)
    window.handled(0.01)
    window.handled(0.11)
    assert window.service_time == pytest.approx(0.02)


def test_more_is_asked_for_once_half_the_window_is_free() -> None:
    window = FetchWindow(workers=1, ack_wait=30.0, max_prefetch=9)
    window.handled(0.0001)
    assert window.size == 10
    assert window.refill_threshold == 5


def test_a_window_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="workers"):
        FetchWindow(workers=0, ack_wait=30.0)


def test_pull_requests_expire_well_within_ack_wait() -> None:
    # A crashed process's requests must be gone before its messages' ack_wait runs out
    assert request_expiry(30.0) == REQUEST_EXPIRES
    assert request_expiry(1.0) == pytest.approx(0.4)
    assert request_expiry(1.0) < 1.0 / 2
    assert request_expiry(0.01) > 0
