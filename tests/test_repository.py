"""The repository's own text: nothing a merge or an editor left behind."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("faststream_natspubsub", "docs", "examples", "tests", "bench", "scripts", ".ci")
SUFFIXES = {".py", ".md", ".yml", ".yaml", ".toml", ".txt", ".proto", ".sh", ".css", ".html", ""}
CONFLICT_MARKER = re.compile(r"^(<{7}|={7}|>{7})( |$)", re.MULTILINE)


def _text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "mkdocs.yml"]
    for folder in CHECKED:
        files += [
            path
            for path in (ROOT / folder).rglob("*")
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts
        ]
    return files


def test_no_file_keeps_a_merge_conflict_marker() -> None:
    files = _text_files()
    marked = [
        str(path.relative_to(ROOT))
        for path in files
        if CONFLICT_MARKER.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert len(files) > 100  # the walk found the repository
    assert marked == []
