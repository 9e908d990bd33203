"""The README's demo runs end to end on the embedded server."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from faststream_natspubsub.demo import run_demo

pytestmark = pytest.mark.nats


async def test_demo_pays_two_orders_and_dead_letters_the_third() -> None:
    out = io.StringIO()
    paid = await run_demo(out)
    text = out.getvalue()
    assert sorted(paid) == ["ORD-1", "ORD-2"]
    assert "attempt=2 order=ORD-2" in text  # the flaky charge was retried
    assert "reason=permanent_error" in text
    assert "correlation_id=checkout-1" in text


@pytest.mark.slow  # a child interpreter (or the docs build): seconds
def test_demo_module_runs_as_a_command_and_exits_zero() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "faststream_natspubsub.demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "demo finished: 2 orders paid" in completed.stdout
