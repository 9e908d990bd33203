"""pyproject's lower bounds are exactly the versions CI tests (.ci/lowest.txt).

.ci/run installs the project with .ci/lowest.txt as constraints and runs the fast tier there;
a bound raised or lowered in one file and not the other would leave the range untested.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
# The runtime dependencies whose lowest versions CI installs.
RUNTIME = ("faststream", "nats-py", "pydantic", "opentelemetry-api", "opentelemetry-sdk", "typer")
# Whose next major (FastStream: minor) release may move what compat.py reads.
CAPPED = ("faststream", "nats-py", "pydantic", "opentelemetry-api", "opentelemetry-sdk")


def lowest_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned.strip()
    return pins


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared.extend(extra)
    return [Requirement(text) for text in declared]


def test_lowest_txt_pins_every_runtime_dependency_and_nothing_else() -> None:
    assert sorted(lowest_pins()) == sorted(RUNTIME)


def test_every_lower_bound_is_the_pinned_lowest_version() -> None:
    pins = lowest_pins()
    checked = set()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        if name not in pins:
            continue
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert lower == [pins[name]], f"{requirement} but .ci/lowest.txt pins {pins[name]}"
        checked.add(name)
    assert checked == set(pins)


def test_the_dependencies_compat_reads_have_an_upper_bound() -> None:
    for requirement in requirements():
        if canonicalize_name(requirement.name) in CAPPED:
            assert any(spec.operator == "<" for spec in requirement.specifier), requirement
