"""Write the generated permission sets into docs/how-to/permissions.md.

Each ``<!-- permissions: NAME -->`` line of the page is followed by a fenced block; this
script replaces those blocks with what the generator prints for the apps of
``examples/e17_permissions.py``. ``tests/test_permissions_docs.py`` fails when the page and
the generator differ: run ``python scripts/permissions_docs.py`` after changing either.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "how-to" / "permissions.md"
_BLOCK = re.compile(r"(<!-- permissions: ([a-z-]+) -->\n```text\n)(.*?)(```)", re.DOTALL)
_NOWHERE = "nats://127.0.0.1:1"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "e17_permissions", ROOT / "examples" / "e17_permissions.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def generated() -> dict[str, str]:
    """Each block of the page by its name, as the generator prints it now."""
    example = _example()
    payments, orders_kv, _ = example.create_apps(_NOWHERE)
    _, orders, _ = example.create_apps(_NOWHERE, inbox=None)
    _, verified, _ = example.create_apps(_NOWHERE, topology="verify")
    return {
        "publisher": payments.permissions("publisher").to_config(),
        "consumer": orders.permissions("consumer").to_config(),
        "consumer-kv": orders_kv.permissions("consumer").to_config(),
        "consumer-verify": verified.permissions("consumer").to_config(),
        "health": orders_kv.permissions("health").to_config(),
        "operator": orders_kv.permissions("operator", inbox_prefix="_INBOX_ops").to_config(),
    }


def on_page(text: str) -> dict[str, str]:
    """Each block of the page by its name, as the page has it."""
    return {match.group(2): match.group(3) for match in _BLOCK.finditer(text)}


def rewrite(text: str, blocks: dict[str, str]) -> str:
    return _BLOCK.sub(lambda m: m.group(1) + blocks[m.group(2)] + m.group(4), text)


if __name__ == "__main__":
    PAGE.write_text(rewrite(PAGE.read_text(), generated()))
    print(f"wrote {PAGE.relative_to(ROOT)}")
