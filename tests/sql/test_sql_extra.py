"""The ``[sql]`` extra: the base install works without it, and says what is missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import sqlalchemy as sa

from faststream_natspubsub.sql import inbox_table, outbox_table, render_ddl, tables_metadata


def run_without_sqlalchemy(body: str) -> subprocess.CompletedProcess[str]:
    script = "import sys\nsys.modules['sqlalchemy'] = None\n" + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )


def test_without_the_extra_the_package_works_and_the_sql_features_name_the_extra() -> None:
    done = run_without_sqlalchemy(
        """
        from faststream.nats import NatsBroker
        from faststream_natspubsub import InboxSession, NatsPubsub
        import faststream_natspubsub.cli
        NatsPubsub(NatsBroker(), env="dev", app="orders")
        try:
            NatsPubsub(NatsBroker(), env="dev", app="orders", outbox=object())
        except ImportError as exc:
            print("outbox:", exc)
        try:
            from faststream_natspubsub.sql import SqlInboxStore
        except ImportError as exc:
            print("inbox:", exc)
        """
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["outbox", "inbox"]
    assert all("pip install 'faststream-natspubsub[sql]'" in line for line in lines)


def test_the_cli_without_the_extra_says_what_to_install() -> None:
    done = run_without_sqlalchemy(
        """
        from faststream_natspubsub.cli import main
        sys.argv = ["natspubsub", "outbox", "status", "--database", "sqlite:///x.db"]
        main()
        """
    )

    assert done.returncode == 2
    assert "faststream-natspubsub[sql]" in done.stderr


def test_table_names_follow_the_prefix() -> None:
    metadata = tables_metadata("shop_")

    assert sorted(metadata.tables) == ["shop_inbox", "shop_outbox"]
    assert outbox_table(sa.MetaData()).name == "natspubsub_outbox"
    assert inbox_table(sa.MetaData()).name == "natspubsub_inbox"


def test_a_prefix_that_is_not_a_plain_identifier_is_refused() -> None:
    for prefix in ("Shop-", "drop table;", "1x_"):
        try:
            tables_metadata(prefix)
        except ValueError:
            continue
        raise AssertionError(f"{prefix!r} was accepted")


def test_the_ddl_in_the_docs_is_generated_from_the_tables() -> None:
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "snippets"
    for dialect in ("postgresql", "sqlite"):
        shown = (docs / f"natspubsub-tables.{dialect}.sql").read_text()
        assert shown == render_ddl(dialect), (
            f"docs/snippets/natspubsub-tables.{dialect}.sql is stale: regenerate it with "
            f"python -m faststream_natspubsub.sql {dialect}"
        )
