"""docs/rules.md leads from each rule to its code, its test and its audit check: every function and
test it names exists, so the map cannot rot."""

from __future__ import annotations

import re

from shared.settings import PROJECT_ROOT

RULES = (PROJECT_ROOT / "docs" / "rules.md").read_text()
SOURCES = "\n".join(
    path.read_text()
    for folder in ("services", "shared", "gongji", "tests")
    for path in (PROJECT_ROOT / folder).rglob("*")
    if path.suffix in {".py", ".lua"}
)


def test_every_test_the_map_names_exists() -> None:
    named = set(re.findall(r"\btest_\w+\b(?!\.py)", RULES))  # a test, not a test file
    assert len(named) > 15
    missing = {name for name in named if not re.search(rf"def {name}\(", SOURCES)}
    assert not missing, missing


def test_every_function_the_map_names_exists() -> None:
    cells = re.findall(r"`[\w/.]+\.(?:py|lua): ([\w, ]+)`", RULES)
    named = {name.strip() for cell in cells for name in cell.split(",")} - {""}
    assert len(named) > 15
    missing = {name for name in named if not re.search(rf"(def|function) {name}\(", SOURCES)}
    assert not missing, missing
