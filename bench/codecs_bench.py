"""The codec section of the benchmark: JSON, protobuf and MessagePack side by side.

- encode and decode µs per event and bytes on the wire, in process, on the benchmark's
  envelope (``sample_message`` wrapped as the plugin wraps it);
- ``publish_many`` with each codec (a facade per codec, same stream, same window);
- consume of JSON and of protobuf envelopes by the same plugin consumer (it reads every codec
  by content type), per message and in batch mode, each in its own process.

Run alone with ``python bench/run.py --codecs [--quick]``.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from typing import TYPE_CHECKING, Any, Final

from common import CONSUME_APP, ENV, PUBLISH_APP, TOPIC, now, sample_message, summarize
from faststream.nats import NatsBroker

from faststream_natspubsub import JsonCodec, MsgpackCodec, NatsPubsub, ProtobufCodec
from faststream_natspubsub.codecs import measure
from faststream_natspubsub.middlewares.envelope import EnvelopeMiddleware
from faststream_natspubsub.publishing import OutgoingEvent
from faststream_natspubsub.subjects import build_subject

if TYPE_CHECKING:
    from faststream_natspubsub.codecs import Codec

__all__ = ("CODECS", "codec_section", "render_codecs")

CODECS: Final = {"json": JsonCodec, "protobuf": ProtobufCodec, "msgpack": MsgpackCodec}
# Events per in-process encode/decode measurement, and its repeats.
MICRO_EVENTS: Final = 20_000
MICRO_ROUNDS: Final = 5


def envelope_dicts(n: int, app: str) -> list[dict[str, Any]]:
    """What the plugin hands its codec for ``n`` sample messages."""
    middleware = EnvelopeMiddleware(env=ENV, app=app)
    return [
        middleware.build_envelope(TOPIC, OutgoingEvent(message=sample_message(i)), None)
        for i in range(n)
    ]


def micro(rounds: int = MICRO_ROUNDS, n: int = MICRO_EVENTS) -> dict[str, Any]:
    """Encode and decode µs per event, and bytes per event, for each codec."""
    data = envelope_dicts(n, PUBLISH_APP)
    results: dict[str, Any] = {}
    for name, codec_class in CODECS.items():
        codec: Codec = codec_class()
        encode_us: list[float] = []
        decode_us: list[float] = []
        for _ in range(rounds):
            gc.collect()
            started = time.perf_counter()
            payloads = [codec.encode(item)[0] for item in data]
            encoded = time.perf_counter()
            for payload in payloads:
                codec.decode(payload)
            decoded = time.perf_counter()
            encode_us.append((encoded - started) / n * 1e6)
            decode_us.append((decoded - encoded) / n * 1e6)
        sizes = [measure(codec, item).sent for item in data[:1000]]
        results[name] = {
            "encode_us": summarize(encode_us),
            "decode_us": summarize(decode_us),
            "encode_decode_us": round(
                statistics.median(encode_us) + statistics.median(decode_us), 3
            ),
            "bytes": round(statistics.mean(sizes), 1),
            "content_type": codec.content_type,
        }
    return results


async def codec_section(bench: Any) -> dict[str, Any]:
    """Every codec measurement; ``bench`` is the driver's ``Bench`` (started)."""
    report: dict[str, Any] = {"micro": micro()}
    report["publish_many"] = await _publish_many(bench)
    report["consume"] = await _consume(bench)
    json_many = report["publish_many"]["contenders"]["json"]["msgs_per_s"]["median"]
    json_micro = report["micro"]["json"]["encode_decode_us"]
    report["ratios"] = {
        "publish_many_protobuf_vs_json": round(
            report["publish_many"]["contenders"]["protobuf"]["msgs_per_s"]["median"] / json_many,
            3,
        ),
        "publish_many_protobuf_vs_json_paired": report["publish_many"]["paired"]["protobuf"],
        "publish_many_msgpack_vs_json": round(
            report["publish_many"]["contenders"]["msgpack"]["msgs_per_s"]["median"] / json_many,
            3,
        ),
        "encode_decode_protobuf_vs_json": round(
            json_micro / report["micro"]["protobuf"]["encode_decode_us"], 3
        ),
        "bytes_protobuf_vs_json": round(
            report["micro"]["protobuf"]["bytes"] / report["micro"]["json"]["bytes"], 3
        ),
    }
    for kind in ("plugin", "plugin-batch"):
        rows = report["consume"]["contenders"]
        report["ratios"][f"consume_{kind.replace('-', '_')}_protobuf_vs_json"] = round(
            rows[f"{kind}:protobuf"]["msgs_per_s"]["median"]
            / rows[f"{kind}:json"]["msgs_per_s"]["median"],
            3,
        )
    return report


async def _publish_many(bench: Any) -> dict[str, Any]:
    """``publish_many`` per window with a facade per codec, alternating, on one stream."""
    settings = bench.settings
    n, window = settings.bulk_count, settings.window
    brokers = {name: NatsBroker(bench.url, logger=None) for name in CODECS}
    facades = {
        name: NatsPubsub(brokers[name], env=ENV, app=PUBLISH_APP, codec=CODECS[name]())
        for name in CODECS
    }
    rates: dict[str, list[float]] = {name: [] for name in CODECS}
    cpu: dict[str, list[float]] = {name: [] for name in CODECS}
    stream = bench.pubsub.stream
    for broker in brokers.values():
        await broker.start()
    try:
        for round_no in range(settings.publish_rounds):
            for name in _rotated(list(CODECS), round_no):
                items = [(TOPIC, sample_message(i)) for i in range(n)]
                await bench.js.purge_stream(stream)
                gc.collect()
                cpu0, t0 = time.process_time(), now()
                for start in range(0, n, window):
                    results = await facades[name].publish_many(items[start : start + window])
                    if not all(result.ok for result in results):
                        raise RuntimeError(f"{name}: publish_many failed")
                elapsed, cpu_used = now() - t0, time.process_time() - cpu0
                info = await bench.js.stream_info(stream)
                if info.state.messages != n:
                    raise RuntimeError(f"{name}: {info.state.messages} of {n} stored")
                rates[name].append(n / elapsed)
                cpu[name].append(cpu_used / n * 1e6)
    finally:
        for broker in brokers.values():
            await broker.stop()

    def pairs(name: str) -> tuple[list[float], list[float]]:
        return rates[name], rates["json"]

    paired = {
        name: round(
            statistics.median(a / b for a, b in zip(rates[name], rates["json"], strict=True)), 3
        )
        for name in CODECS
    }
    return {
        "count": n,
        "window": window,
        "rounds": settings.publish_rounds,
        "contenders": {
            name: {"msgs_per_s": summarize(rates[name]), "cpu_us_per_msg": summarize(cpu[name])}
            for name in CODECS
        },
        "paired": paired,
    }


async def _consume(bench: Any) -> dict[str, Any]:
    """The same plugin consumer reading JSON envelopes and protobuf envelopes."""
    settings = bench.settings
    count = settings.consume_count
    topics = {"json": "codec.json", "protobuf": "codec.protobuf"}
    for name, topic in topics.items():
        await _prepublish(bench, topic, count, CODECS[name]())
    kinds = [f"{kind}:{codec}" for kind in ("plugin", "plugin-batch") for codec in topics]
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for round_no in range(settings.consume_rounds):
        for contender in _rotated(kinds, round_no):
            kind, codec = contender.split(":")
            runs[contender].append(await bench._consumer_run(kind, topics[codec], count))
    return {
        "count": count,
        "rounds": settings.consume_rounds,
        "contenders": {
            contender: {
                "msgs_per_s": summarize([r["msgs_per_s"] for r in results]),
                "cpu_us_per_msg": summarize([r["cpu_us_per_msg"] for r in results]),
            }
            for contender, results in runs.items()
        },
    }


async def _prepublish(bench: Any, topic: str, n: int, codec: Codec) -> None:
    """Store ``n`` envelopes of ``codec`` on ``topic`` of the consume app (raw, pipelined)."""
    subject = build_subject(ENV, CONSUME_APP, topic)
    stream = bench.pubsub_con.stream
    data = envelope_dicts(n, CONSUME_APP)
    for start in range(0, n, 1000):
        futures = []
        for item in data[start : start + 1000]:
            headers = {
                "Nats-Msg-Id": item["event_id"],
                "Nats-Published-At": item["occurred_at"],
                "content-type": codec.content_type,
            }
            payload, _ = codec.encode(item)
            futures.append(
                await bench.js.publish_async(subject, payload, headers=headers, stream=stream)
            )
        await asyncio.gather(*futures)


def _rotated(items: list[str], shift: int) -> list[str]:
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def render_codecs(section: dict[str, Any]) -> list[str]:
    """The codec tables, as lines."""
    lines = [
        f"codecs: encode + decode per event, in process ({MICRO_EVENTS} events x "
        f"{MICRO_ROUNDS} rounds; medians)",
        f"{'codec':<12}{'encode us':>11}{'decode us':>11}{'sum us':>9}{'bytes':>8}  content-type",
    ]
    for name, row in section["micro"].items():
        lines.append(
            f"{name:<12}{row['encode_us']['median']:>11.2f}{row['decode_us']['median']:>11.2f}"
            f"{row['encode_decode_us']:>9.2f}{row['bytes']:>8.0f}  {row['content_type']}"
        )
    many = section["publish_many"]
    lines += [
        "",
        f"codecs: publish_many, window {many['window']} (msgs/s; {many['count']} msgs x "
        f"{many['rounds']} rounds)",
        f"{'codec':<12}{'median':>10}{'min':>10}{'max':>10}{'CPU us/msg':>12}{'vs JSON':>9}",
    ]
    for name, row in many["contenders"].items():
        rate = row["msgs_per_s"]
        lines.append(
            f"{name:<12}{rate['median']:>10,.0f}{rate['min']:>10,.0f}{rate['max']:>10,.0f}"
            f"{row['cpu_us_per_msg']['median']:>12.1f}{many['paired'][name]:>9.2f}"
        )
    consume = section["consume"]
    lines += [
        "",
        f"codecs: consume of JSON vs protobuf envelopes (msgs/s; {consume['count']} msgs x "
        f"{consume['rounds']} rounds, one process each)",
        f"{'consumer:envelopes':<24}{'median':>10}{'min':>10}{'max':>10}{'CPU us/msg':>12}",
    ]
    for name, row in consume["contenders"].items():
        rate = row["msgs_per_s"]
        lines.append(
            f"{name:<24}{rate['median']:>10,.0f}{rate['min']:>10,.0f}{rate['max']:>10,.0f}"
            f"{row['cpu_us_per_msg']['median']:>12.1f}"
        )
    lines += ["", "codec ratios (protobuf or msgpack / JSON; > 1: faster or larger)"]
    lines += [f"  {key:<44}{value:>8.2f}" for key, value in section["ratios"].items()]
    return lines
