"""RetryPolicy.delay_for is a pure function: the delay table without a broker."""

from __future__ import annotations

import pytest

from faststream_natspubsub import RetryPolicy


def test_default_policy_delays_for_attempts_one_to_eight() -> None:
    policy = RetryPolicy()
    assert [policy.delay_for(n) for n in range(1, 9)] == [1, 2, 5, 10, 30, 60, 60, 60]


def test_custom_policy_multiplies_beyond_the_list_and_caps() -> None:
    policy = RetryPolicy(backoff=(0.5, 1), multiplier=3, max_backoff=20)
    assert [policy.delay_for(n) for n in range(1, 9)] == [0.5, 1, 3, 9, 20, 20, 20, 20]


def test_the_cap_applies_to_listed_delays_too() -> None:
    assert RetryPolicy(backoff=(5, 100), max_backoff=30).delay_for(2) == 30


def test_jitter_spreads_within_the_fraction() -> None:
    policy = RetryPolicy(backoff=(10,), jitter=0.2)
    assert policy.delay_for(1, rand=lambda: 0.0) == pytest.approx(8)
    assert policy.delay_for(1, rand=lambda: 1.0) == pytest.approx(12)
    assert policy.delay_for(1, rand=lambda: 0.5) == pytest.approx(10)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert RetryPolicy().delay_for(10_000) == 60


def test_max_deliver_leaves_headroom_beyond_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.max_deliver > policy.max_attempts


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"backoff": (-1,)}, {"multiplier": 0.5}, {"jitter": 2}],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_attempts_are_one_based() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().delay_for(0)
