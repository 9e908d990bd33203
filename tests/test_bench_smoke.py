"""The benchmark runs every row end to end and reports its ratios (no speed is asserted).

Smoke sizes: the same code paths as ``--quick`` and the full run, in a fraction of the time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATIO_KEYS = (
    "consume_vs_faststream",
    "publish_vs_faststream",
    "publish_many_vs_faststream",
    "publish_many_vs_raw",
    "default_consume_vs_tuned",
    "io_scaling_32",
    "io_scaling_100",
    "ordered_io_scaling_32",
    "kv_inbox_vs_none",
    "batch_kv_inbox_vs_batch",
    "io_100_vs_faststream",
)


@pytest.mark.nats
@pytest.mark.slow
@pytest.mark.timeout(600)  # every row still starts its own consumer process
def test_benchmark_writes_positive_ratios_to_json(tmp_path: Path) -> None:
    # Given a place for the JSON report
    report_path = tmp_path / "bench.json"

    # When the benchmark runs in its own process, at smoke sizes
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )

    # Then it succeeds and the report holds every ratio as a positive number
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "ratios" in completed.stdout
    ratios = json.loads(report_path.read_text())["ratios"]
    for key in RATIO_KEYS:
        assert isinstance(ratios[key], int | float), key
        assert ratios[key] > 0, key
    assert isinstance(ratios["rss_delta_mb"], int | float)
    assert ratios["paired"]["io_scaling_100"] > 0
    # And the codec section compared protobuf with JSON
    codecs = json.loads(report_path.read_text())["codecs"]
    assert codecs["ratios"]["publish_many_protobuf_vs_json"] > 0
    assert codecs["micro"]["protobuf"]["bytes"] < codecs["micro"]["json"]["bytes"]
    assert "codecs: publish_many" in completed.stdout
