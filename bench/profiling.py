"""Where the plugin spends its time: profiles of its consume and publish paths.

Usage: ``python bench/profiling.py [--tool cprofile|py-spy] [--count N] [--out DIR]``.

- consume: the plugin consumer process reads ``N`` pre-published envelopes under cProfile
  (``consumer.py --profile``) or under ``py-spy record`` (if installed; not a dependency);
- publish: ``pubsub.publish`` awaited one by one and ``publish_many`` in windows of 256, in
  this process under cProfile.

Prints the top functions by own time and the plugin's own functions, in µs per message.
cProfile inflates Python-heavy code; compare its numbers with each other, not with run.py.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import ENV, TOPIC, run, sample_message
from run import QUICK, Bench, chunks

from faststream_natspubsub.testing import EmbeddedNatsServer

PACKAGE_MARK = "faststream_natspubsub"
PY_SPY_RATE = 1000


def summarize_pstats(path: Path, n: int, *, top: int = 25) -> str:
    """Top functions by own time, then the plugin's own functions, both in µs per message."""
    stats = pstats.Stats(str(path))
    rows: list[tuple[float, float, int, str]] = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = _short(filename)
        rows.append((tottime, cumtime, ncalls, f"{short}:{line}({func})"))
    total = sum(r[0] for r in rows)
    lines = [f"total profiled time {total:.3f} s = {total / n * 1e6:.1f} us/msg"]
    lines.append(f"{'own us/msg':>11}{'cum us/msg':>11}{'calls/msg':>10}  function")
    for tottime, cumtime, ncalls, name in sorted(rows, reverse=True)[:top]:
        lines.append(
            f"{tottime / n * 1e6:>11.2f}{cumtime / n * 1e6:>11.2f}{ncalls / n:>10.2f}  {name}"
        )
    own = [r for r in rows if PACKAGE_MARK in r[3]]
    own_total = sum(r[0] for r in own)
    lines.append(f"-- plugin code ({PACKAGE_MARK}): own time {own_total / n * 1e6:.1f} us/msg")
    for tottime, cumtime, ncalls, name in sorted(own, reverse=True)[:top]:
        lines.append(
            f"{tottime / n * 1e6:>11.2f}{cumtime / n * 1e6:>11.2f}{ncalls / n:>10.2f}  {name}"
        )
    return "\n".join(lines)


def summarize_collapsed(path: Path, n: int, rate: int, *, top: int = 25) -> str:
    """Own and inclusive time per function from py-spy's collapsed ("raw") output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        # "func (file:line)" -> "func (file)": one row per function, not per line.
        frames = [_short(re.sub(r":\d+\)$", ")", f)) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def us(count: int) -> float:
        return count / rate / n * 1e6

    lines = [
        f"{total} samples at {rate} Hz = {us(total):.1f} us/msg (start-up included)",
        f"{'own us/msg':>11}{'cum us/msg':>11}  function",
    ]
    lines.extend(
        f"{us(count):>11.2f}{us(inclusive[frame]):>11.2f}  {frame}"
        for frame, count in own.most_common(top)
    )
    mine = sorted(((c, f) for f, c in inclusive.items() if PACKAGE_MARK in f), reverse=True)
    lines.append(f"-- functions of {PACKAGE_MARK}, by inclusive time")
    lines.extend(
        f"{us(own[frame]):>11.2f}{us(count):>11.2f}  {frame}" for count, frame in mine[:top]
    )
    return "\n".join(lines)


def _short(name: str) -> str:
    for marker in ("site-packages/", "/work/main/"):
        if marker in name:
            return name.split(marker, 1)[1]
    return name


async def profile_all(tool: str, count: int, out: Path) -> dict[str, Path]:
    """Run the three profiles; return the files written."""
    files: dict[str, Path] = {}
    async with EmbeddedNatsServer() as server:
        bench = Bench(server.url, QUICK)
        await bench.start()
        try:
            await bench._prepublish("profile.consume", count)
            for kind in ("plugin", "faststream"):
                if tool == "py-spy":
                    path = out / f"consume-{kind}.collapsed"
                    bench.launcher = (
                        *("py-spy", "record", "--format", "raw", "--rate", str(PY_SPY_RATE)),
                        *("--nonblocking", "-o", str(path), "--"),
                    )
                    extra: tuple[str, ...] = ()
                else:
                    path = out / f"consume-{kind}.prof"
                    bench.launcher = ()
                    extra = ("--profile", str(path))
                await bench._consumer_run(kind, "profile.consume", count, extra=extra)
                files[f"consume-{kind}"] = path
            bench.launcher = ()

            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(count // 4):
                await bench.pubsub.publish(TOPIC, sample_message(i))
            profiler.disable()
            files["publish"] = out / "publish.prof"
            profiler.dump_stats(files["publish"])

            items = [(TOPIC, sample_message(i)) for i in range(count)]
            profiler = cProfile.Profile()
            profiler.enable()
            for chunk in chunks(items, 256):
                await bench.pubsub.publish_many(chunk)
            profiler.disable()
            files["publish_many"] = out / "publish_many.prof"
            profiler.dump_stats(files["publish_many"])
        finally:
            await bench.close()
    return files


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tool", choices=("cprofile", "py-spy"), default="cprofile")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "natspubsub-profile"
    )
    args = parser.parse_args(argv)
    if args.tool == "py-spy" and shutil.which("py-spy") is None:
        parser.error("py-spy is not installed (pip install py-spy)")
    args.out.mkdir(parents=True, exist_ok=True)
    files = run(profile_all(args.tool, args.count, args.out))
    per_path: dict[str, Any] = {
        "consume-plugin": args.count,
        "consume-faststream": args.count,
        "publish": args.count // 4,
        "publish_many": args.count,
    }
    for name, path in files.items():
        print(f"\n=== {name} ({per_path[name]} msgs, env {ENV}) — {path}")
        if path.suffix == ".collapsed":
            print(summarize_collapsed(path, per_path[name], PY_SPY_RATE))
        else:
            print(summarize_pstats(path, per_path[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
