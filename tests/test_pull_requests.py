"""The server's answers to pull requests, read without raising or losing what came with them.

The fetch-ahead and batch mode read them the same way (``pull_requests.PullLedger``); the
consumer-side behaviour against a real server is in tests/test_pull.py and
tests/test_dispatch.py.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from nats.aio.msg import Msg
from support import fake_pull_parts

from faststream_natspubsub.fetching import PullSource
from faststream_natspubsub.pull_requests import REFUSED_PAUSE, PullLedger

CLIENT: Any = SimpleNamespace(stats={"reconnects": 0}, is_closed=False)


def _message(seq: int) -> Msg:
    return Msg(_client=CLIENT, subject="test.app.t", reply=f"$JS.ACK.S.C.1.{seq}.{seq}.0.0")


def _status(code: str, **headers: str) -> Msg:
    return Msg(_client=CLIENT, subject="_INBOX.x", headers={"Status": code, **headers})


def test_messages_count_down_what_is_owed_and_heartbeats_change_nothing() -> None:
    ledger = PullLedger(CLIENT)
    ledger.asked(3, expires=5.0)
    assert ledger.is_message(_message(1))
    assert not ledger.is_message(_status("100"))
    assert ledger.outstanding == 2
    assert ledger.can_request()


def test_an_expired_request_gives_back_what_it_did_not_deliver() -> None:
    ledger = PullLedger(CLIENT)
    ledger.asked(10, expires=5.0)
    assert not ledger.is_message(_status("408", **{"Nats-Pending-Messages": "4"}))
    assert ledger.outstanding == 6
    # A hostile or garbled count is not trusted beyond ending what was asked
    assert not ledger.is_message(_status("408", **{"Nats-Pending-Messages": "-50"}))
    assert ledger.outstanding == 6
    assert not ledger.is_message(_status("408", **{"Nats-Pending-Messages": "lots"}))
    assert ledger.outstanding == 0


@pytest.mark.parametrize("code", ["409", "503", "400"])
def test_a_refusal_or_an_unexpected_status_ends_requests_and_pauses_the_next(
    code: str, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = PullLedger(CLIENT)
    ledger.asked(10, expires=5.0)
    for _ in range(3):
        assert not ledger.is_message(_status(code, Description="Exceeded MaxRequestBatch of 2"))
    assert ledger.outstanding == 0
    assert not ledger.can_request()
    assert 0 < ledger.pause_left() <= REFUSED_PAUSE
    # Logged once, however often the server says it
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert logged == [
        f"the server refused a pull request: {code} Exceeded MaxRequestBatch of 2 "
        "(asking again shortly)"
    ]


def test_a_status_between_messages_loses_none_of_them() -> None:
    # Before: a 503 among arrivals raised from take(); the messages taken before it were
    # gone until ack_wait, and at a stop nothing was handed back
    parts = fake_pull_parts(CLIENT)
    queue = parts.queue
    source = PullSource(parts)
    for msg in (_message(1), _message(2), _status("503"), _message(3)):
        queue.put_nowait(msg)

    taken = source.take()

    assert [m.reply.split(".")[5] for m in taken] == ["1", "2", "3"]
    assert queue.empty()
    assert not source.can_request()  # asked again after the pause
