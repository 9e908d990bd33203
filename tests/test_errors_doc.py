"""The error tree of the reference page is the one in errors.py's docstring."""

from __future__ import annotations

from pathlib import Path

from faststream_natspubsub import errors

ROOT = Path(__file__).resolve().parent.parent


def test_the_reference_page_draws_the_tree_of_the_errors_module() -> None:
    docstring = errors.__doc__ or ""
    tree = docstring[docstring.index("NatsPubsubError\n") : docstring.index("\n\n``")]
    page = (ROOT / "docs" / "reference" / "errors.md").read_text()
    assert tree.replace("``", "`") in page


def test_every_error_of_the_tree_exists() -> None:
    docstring = errors.__doc__ or ""
    tree = docstring[docstring.index("NatsPubsubError\n") : docstring.index("\n\n``")]
    names = [line.split("── ")[-1].split()[0] for line in tree.splitlines()[1:]]
    defined = [name for name in names if name != "HostVersionError"]
    assert all(isinstance(getattr(errors, name), type) for name in defined)
