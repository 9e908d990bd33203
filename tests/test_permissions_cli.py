"""The operator role: every ``natspubsub`` command for an app works with exactly the set the
generator prints for it, and without any one entry a command fails with one line naming it
(issue 19.2, 19.3). Also the ``permissions`` command itself."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from permission_support import (
    ADMIN,
    NOWHERE,
    ORDERS_PREFIX,
    dlq_records,
    orders_app,
    param_id,
    payments_app,
    running_broker,
    users_config,
)
from support import wait_until
from typer.testing import CliRunner

from faststream_natspubsub.advisory_check import subject_matches
from faststream_natspubsub.cli import app as cli
from faststream_natspubsub.permissions import Permission, PermissionSet
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

OPS_PREFIX = "_INBOX_ops"
# Small enough that a 13 kB event's record keeps only the head of its bytes (truncated).
SMALL_PAYLOAD = "max_payload: 16384\n"


def operator_set() -> PermissionSet:
    return orders_app(NOWHERE).pubsub.permissions("operator", inbox_prefix=OPS_PREFIX)


@dataclass(frozen=True)
class Ran:
    args: tuple[str, ...]
    code: int
    out: str
    err: str


def _runner() -> CliRunner:
    """A runner that keeps stderr apart: click 8.2+ always does; 8.1 (with typer < 0.16, which
    the lowest-versions CI stage installs) only when asked with ``mix_stderr=False``."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


async def natspubsub(url: str, *args: str) -> Ran:
    """One command, in this process (in a thread: it runs its own event loop), as ops."""
    runner = _runner()
    connection = (
        "--servers",
        url,
        "--env",
        "test",
        "--app",
        "orders",
        "--user",
        "ops",
        "--password",
        "ops",
        "--inbox-prefix",
        OPS_PREFIX,
        "--timeout",
        "3",
    )
    clean = dict.fromkeys(("NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_CREDS"))
    result = await asyncio.to_thread(
        runner.invoke, cli, [*args, *connection], env={**clean, "COLUMNS": "200"}
    )
    return Ran(args, result.exit_code, result.stdout, result.stderr)


async def _dead_letters(url: str) -> None:
    """As admin: orders dead-letters a small and a large (truncated record) event."""
    orders = orders_app(url, user=ADMIN)
    payments = payments_app(url, user=ADMIN)
    async with running_broker(payments.broker), running_broker(orders.pubsub.broker):
        await payments.publish("payment.done", {"kind": "bad"})
        await payments.publish("payment.done", {"kind": "bad", "blob": "x" * 13_000})

        async def two() -> bool:
            return len(await dlq_records(url)) == 2

        await wait_until(two, message="two dead letters")


async def _every_command(url: str) -> list[Ran]:
    """What an operator runs for the app, in an order that needs each right once."""
    ran = [await natspubsub(url, "topology", "ensure")]  # its streams do not exist yet
    await _dead_letters(url)
    ran += [
        await natspubsub(url, "topology", "show"),
        await natspubsub(url, "health"),
        await natspubsub(url, "dlq", "ls", "--json"),
    ]
    records = json.loads(ran[-1].out) if ran[-1].code == 0 else []
    small = next((r for r in records if not r["raw_truncated"]), None)
    large = next((r for r in records if r["raw_truncated"]), None)
    if small is not None and large is not None:
        ran += [
            await natspubsub(url, "dlq", "show", "--seq", str(small["dlq_seq"])),
            await natspubsub(url, "dlq", "replay", "--seq", str(small["dlq_seq"])),
            await natspubsub(url, "dlq", "replay", "--seq", str(large["dlq_seq"])),
        ]
    ran.append(await natspubsub(url, "dlq", "purge", "--yes"))
    return ran


async def test_every_operator_command_works_with_exactly_its_set() -> None:
    config = users_config({"ops": operator_set()}, extra=SMALL_PAYLOAD)
    async with EmbeddedNatsServer(config=config) as server:
        ran = await _every_command(server.url)

    assert len(ran) == 8, ran
    for one in ran:
        # health may say degraded (the replayed events wait for orders), never worse
        assert one.code == 0 or (one.args[0] == "health" and one.code == 1), one
        assert "error" not in one.err, one
        assert "warning" not in one.err, one
    assert "replayed event" in ran[5].out
    assert "replayed event" in ran[6].out
    assert "purged 0 records" in ran[7].out


def _names(text: str, permission: Permission) -> bool:
    """Whether ``text`` names a subject that ``permission`` covers (the same case-blind way
    the server does)."""
    quoted = re.findall(r'"([^"\s]+)"', text)
    pattern = permission.subject.lower()
    return any(subject_matches(pattern, q.lower()) or q == permission.subject for q in quoted)


OPERATOR = operator_set()


@pytest.mark.slow
@pytest.mark.parametrize("missing", [pytest.param(p, id=param_id(p)) for p in OPERATOR.permissions])
async def test_without_any_one_operator_permission_a_command_fails_naming_it(
    missing: Permission,
) -> None:
    config = users_config({"ops": OPERATOR.without(missing)}, extra=SMALL_PAYLOAD)
    async with EmbeddedNatsServer(config=config) as server:
        ran = await _every_command(server.url)

    failed = [one for one in ran if one.code != 0]
    assert failed, f"every command worked without {missing.subject}"
    naming = [one for one in failed if _names(one.err + one.out, missing)]
    assert naming, [(one.args, one.err, one.out[-300:]) for one in failed]
    for one in ran:
        assert "Traceback" not in one.err, one
        if one.args[0] != "health":
            assert len(one.err.strip().splitlines()) <= 2, one  # one line (and a warning)


# -- the permissions command ----------------------------------------------------------------


def _permissions(*args: str) -> Any:
    return _runner().invoke(cli, ["permissions", *args])


def test_the_command_prints_what_the_app_object_says() -> None:
    # Given an app described by options, and the same app's object
    described = _permissions(
        "--env",
        "test",
        "--app",
        "orders",
        "--role",
        "consumer",
        "--role",
        "health",
        "--topic",
        "payments:payment.done",
        "--inbox-prefix",
        ORDERS_PREFIX,
    )
    app = orders_app(NOWHERE).pubsub

    # Then the block is the object's, exactly
    assert described.exit_code == 0, described.stderr
    assert described.stdout == app.permissions("consumer", "health").to_config()


def test_the_command_reads_a_real_app_object(tmp_path: Path, monkeypatch: Any) -> None:
    module = tmp_path / "shop_app.py"
    module.write_text(
        "from typing import Any\n"
        "from faststream.nats import NatsBroker\n"
        "from faststream_natspubsub import NatsPubsub\n"
        "pubsub = NatsPubsub(NatsBroker(), env='test', app='shop', inbox='kv',\n"
        "                    inbox_prefix='_INBOX_shop')\n"
        "@pubsub.subscriber('order.created', app='orders', durable='shop-orders')\n"
        "async def created(body: Any) -> None: ...\n"
    )
    monkeypatch.chdir(tmp_path)
    result = _permissions("--from", "shop_app:pubsub", "--role", "consumer", "--json")

    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert "$JS.API.CONSUMER.MSG.NEXT.TEST_ORDERS.shop-orders" in data["publish"]
    assert "$KV.natspubsub_inbox_test_shop.>" in data["publish"]
    assert data["subscribe"][-1] == "_INBOX_shop.>"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--env", "test", "--app", "orders", "--role", "admin"), "roles must be"),
        (("--env", "test", "--app", "orders", "--role", "consumer"), "no subscribers"),
        (("--app", "orders", "--role", "publisher"), "missing --env"),
        (("--from", "nowhere", "--role", "publisher"), "MODULE:ATTRIBUTE"),
        (("--from", "no_such_module:x", "--role", "publisher"), "cannot import"),
        (("--env", "test", "--app", "o", "--role", "publisher", "--inbox", "x"), "--inbox"),
    ],
)
def test_the_command_refuses_bad_input_in_one_line(args: tuple[str, ...], error: str) -> None:
    result = _permissions(*args)
    assert result.exit_code == 2
    assert error in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stdout + result.stderr


async def test_a_refused_request_is_one_line_naming_it_at_once_not_a_timeout() -> None:
    # Given an operator without the right to purge the DLQ
    purge = next(p for p in OPERATOR.permissions if ".PURGE." in p.subject)
    config = users_config({"ops": OPERATOR.without(purge)})
    async with EmbeddedNatsServer(config=config) as server:
        assert (await natspubsub(server.url, "topology", "ensure")).code == 0
        started = asyncio.get_running_loop().time()

        # When it purges (the request's timeout is 3 s)
        ran = await natspubsub(server.url, "dlq", "purge", "--yes")
        elapsed = asyncio.get_running_loop().time() - started

    # Then one line names the permission, before the timeout
    assert ran.code == 1
    assert ran.err.strip() == (
        "natspubsub: error: permission denied: the user may not publish to "
        '"$JS.API.STREAM.PURGE.DLQ_TEST_ORDERS" (add it to the user\'s publish allow list; '
        "`natspubsub permissions` prints what an app needs)"
    )
    assert elapsed < 2.0
