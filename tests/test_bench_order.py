"""The benchmark runs the two sides of each consume ratio back to back in every round."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from run import _CONSUME_RUN_ORDER, FULL, QUICK, Settings, consume_run_order, rotated

# (one side, the other side, how far apart they may run), for every ratio with a target
RATIO_SIDES = (
    ("plugin", "faststream", 1),  # consume_vs_faststream
    ("plugin-batch", "raw", 1),  # batch_consume_vs_raw
    ("plugin-default", "plugin", 3),  # default_consume_vs_tuned (a wide margin)
    ("plugin-kv-inbox", "plugin-default", 2),  # kv_inbox_vs_none
    ("plugin-io-32", "plugin-default", 1),  # io_scaling_32: its ideal is the default's rate
    ("plugin-io-100", "plugin-default", 1),  # io_scaling_100: the same
    ("plugin-ordered-32", "plugin-default", 2),  # ordered_io_scaling_32: the same
    ("plugin-batch-kv-inbox", "plugin-batch", 1),  # batch_kv_inbox_vs_batch
    ("plugin-batch-sql-inbox-postgresql", "plugin-batch-inbox", 1),
)


@pytest.mark.parametrize("settings", [QUICK, FULL], ids=["quick", "full"])
def test_each_ratios_two_sides_run_back_to_back_in_every_round(settings: Settings) -> None:
    kinds = ["a-row-of-the-future", *reversed(_CONSUME_RUN_ORDER)]
    for round_no in range(settings.consume_rounds):
        order = rotated(consume_run_order(kinds), round_no)
        assert sorted(order) == sorted(kinds)  # every row runs once a round
        for one, other, apart in RATIO_SIDES:
            assert abs(order.index(one) - order.index(other)) <= apart, (round_no, one, other)
