"""Where ``publish_many`` spends its client time per event, with each codec (cProfile).

Usage: ``python bench/profile_codecs.py [--count N]``. Prints, per codec, the cumulative µs
per event of the steps of one item (event id, envelope dict, codec, header block) and of the
pipelined send with PubAck routing. cProfile inflates Python-heavy code: compare the codecs'
rows with each other, not with ``run.py``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path
from typing import Any, Final

from codecs_bench import CODECS
from common import ENV, PUBLISH_APP, TOPIC, run, sample_message
from faststream.nats import NatsBroker

from faststream_natspubsub import NatsPubsub
from faststream_natspubsub.testing import EmbeddedNatsServer

WINDOW: Final = 256
# (label, function name as cProfile reports it): the steps of one publish_many item.
STEPS: Final = (
    ("whole publish_many", "publish_many"),
    ("  prepare one item (all below)", "_prepare"),
    ("    envelope dict (build_envelope)", "build_envelope"),
    ("      event id (new_event_id)", "new_event_id"),
    ("    codec encode (size rule, gzip check)", "encode"),
    ("      serialize (JSON's to_json is inline in encode)", "serialize"),
    ("  pipelined send + PubAcks (send_round)", "send_round"),
    ("    PubAck replies (_on_reply)", "_on_reply"),
)


async def profile(url: str, count: int) -> dict[str, dict[str, float]]:
    """Cumulative µs per event of each step, per codec."""
    results: dict[str, dict[str, float]] = {}
    for name, codec_class in CODECS.items():
        broker = NatsBroker(url, logger=None)
        pubsub = NatsPubsub(broker, env=ENV, app=PUBLISH_APP, codec=codec_class())
        await broker.start()
        try:
            items = [(TOPIC, sample_message(i)) for i in range(count)]
            await pubsub.publish_many(items[:WINDOW])  # warm-up: subscription, caches
            profiler = cProfile.Profile()
            profiler.enable()
            for start in range(0, count, WINDOW):
                await pubsub.publish_many(items[start : start + WINDOW])
            profiler.disable()
        finally:
            await broker.stop()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.prof"
            profiler.dump_stats(path)
            results[name] = _steps(pstats.Stats(str(path)), count)
    return results


def _steps(stats: Any, count: int) -> dict[str, float]:
    cumulative: dict[str, float] = {}
    for (filename, _line, function), row in stats.stats.items():
        if "faststream_natspubsub" not in filename or function not in dict(STEPS).values():
            continue
        if function == "encode" and "envelope.py" not in filename:
            continue
        if function == "serialize" and "_protobuf" in filename:
            continue  # ProtobufCodec.serialize calls it: counted once
        cumulative[function] = cumulative.get(function, 0.0) + row[3]
    return {label: cumulative.get(function, 0.0) / count * 1e6 for label, function in STEPS}


async def _main(count: int) -> None:
    async with EmbeddedNatsServer() as server:
        results = await profile(server.url, count)
    names = list(results)
    print(f"publish_many, window {WINDOW}, {count} events; cumulative us per event (cProfile)")
    print(f"{'step':<58}" + "".join(f"{n:>10}" for n in names))
    for label, _ in STEPS:
        print(f"{label:<58}" + "".join(f"{results[n][label]:>10.2f}" for n in names))


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20_000)
    run(_main(parser.parse_args().count))


if __name__ == "__main__":
    main()
