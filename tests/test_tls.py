"""TLS: quiet and clear for the CLI and for apps, and the docs' example (issue 19.10)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from faststream.nats import NatsBroker
from faststream.security import BaseSecurity
from support import natspubsub
from tls_support import TlsFiles, make_tls_files

from faststream_natspubsub import NatsPubsub
from faststream_natspubsub.compat import broker_connection_kwargs, mark_tls_stream
from faststream_natspubsub.testing import EmbeddedNatsServer

pytestmark = pytest.mark.nats

ROOT = Path(__file__).resolve().parent.parent
AUTH = "authorization { user: app, password: secret }"


@pytest.fixture
async def tls(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedNatsServer, TlsFiles, str]]:
    """A nats-server that requires TLS and a user; its tls:// URL."""
    files = make_tls_files(tmp_path)
    async with EmbeddedNatsServer(config=f"{files.server_config()}\n{AUTH}") as server:
        yield server, files, server.url.replace("nats://", "tls://")


def cli_args(url: str, *extra: str) -> tuple[str, ...]:
    return ("--servers", url, "--env", "test", "--user", "app", "--password", "secret", *extra)


async def test_cli_commands_over_tls_print_nothing_on_stderr(
    tls: tuple[EmbeddedNatsServer, TlsFiles, str],
) -> None:
    _, files, url = tls

    result = await natspubsub("topology", "show", *cli_args(url, "--tls-ca", str(files.ca)))

    assert result.code == 0, result
    assert result.err == ""


async def test_the_cli_names_an_untrusted_server_certificate_at_once(
    tls: tuple[EmbeddedNatsServer, TlsFiles, str],
) -> None:
    _, files, url = tls
    started = time.monotonic()

    result = await natspubsub("topology", "show", *cli_args(url, "--tls-ca", str(files.wrong_ca)))

    assert result.code == 2, result
    [line] = result.err.strip().splitlines()
    assert "TLS failed: certificate verify failed: unable to get local issuer certificate" in line
    assert "--tls-ca" in line
    assert time.monotonic() - started < 10


async def test_an_app_trusting_the_wrong_ca_fails_its_start_at_once_and_says_why(
    tls: tuple[EmbeddedNatsServer, TlsFiles, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, files, url = tls
    caplog.set_level(logging.ERROR, logger="faststream_natspubsub")
    broker = NatsBroker(url, security=BaseSecurity(ssl_context=files.context(wrong=True)))
    NatsPubsub(broker, env="test", app="orders")
    started = time.monotonic()

    with pytest.raises(ssl.SSLCertVerificationError):
        await broker.start()
    elapsed = time.monotonic() - started
    await broker.stop()

    assert elapsed < 5
    [error] = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert "certificate verify failed: unable to get local issuer certificate" in error.getMessage()


async def test_the_docs_tls_example_runs_quietly_against_a_tls_server(
    tls: tuple[EmbeddedNatsServer, TlsFiles, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, files, url = tls
    caplog.set_level(logging.WARNING)
    spec = importlib.util.spec_from_file_location("e13", ROOT / "examples" / "e14_tls_and_auth.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)

    meta = await module.main(url, ca_file=str(files.ca), user="app", password="secret")
    await asyncio.sleep(0)  # let the closed transport's callbacks run

    assert meta.subject == "dev.orders.order.created"
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]


# -- compat accesses (one test each) ---------------------------------------------------------


async def test_compat_marks_a_tls_connection_as_such(
    tls: tuple[EmbeddedNatsServer, TlsFiles, str],
) -> None:
    _, files, url = tls
    nc = await nats.connect(url, tls=files.context(), user="app", password="secret")
    try:
        protocol: Any = nc._transport._io_writer._protocol  # type: ignore[union-attr]
        assert protocol._over_ssl is False  # the nats-py behaviour this works around
        mark_tls_stream(nc)
        assert protocol._over_ssl is True
    finally:
        await nc.close()


def test_compat_reads_the_brokers_connection_arguments() -> None:
    broker = NatsBroker("nats://127.0.0.1:4222")

    kwargs = broker_connection_kwargs(broker)

    assert callable(kwargs["error_cb"])
    assert kwargs["servers"] == ["nats://127.0.0.1:4222"]
