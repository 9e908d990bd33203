"""The permissions page shows exactly what the generator prints (no drift)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    path = ROOT / "scripts" / "permissions_docs.py"
    spec = importlib.util.spec_from_file_location("permissions_docs", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_set_on_the_permissions_page_is_the_generators() -> None:
    script = _script()
    on_page = script.on_page(script.PAGE.read_text())
    generated = script.generated()
    assert set(on_page) == set(generated)
    for name, block in generated.items():
        assert on_page[name] == block, (
            f"the {name!r} block of docs/how-to/permissions.md differs from the generator: "
            "run `python scripts/permissions_docs.py`"
        )
