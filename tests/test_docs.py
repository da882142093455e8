"""docs/targets.md documents exactly the keys the target validator accepts."""

from __future__ import annotations

import re
from pathlib import Path

from quantfw.target import schema

TARGETS_MD = Path(__file__).resolve().parents[1] / "docs" / "targets.md"


def documented_tables() -> list[tuple[tuple[str, ...], dict[str, bool]]]:
    """Per heading of docs/targets.md: the tables it names and its keys (key → marked required).

    A heading names tables as ```[dotted.path]``` in backticks ("Top level" is the top level);
    each key is a list item starting with the key in backticks.
    """
    sections: list[tuple[tuple[str, ...], dict[str, bool]]] = []
    for line in TARGETS_MD.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"#{2,3} (.*)", line)
        if heading:
            text = heading.group(1)
            paths = ("",) if text == "Top level" else tuple(re.findall(r"`\[([^\]]+)\]`", text))
            sections.append((paths, {}))
            continue
        item = re.match(r"- `([a-z_]+)`( \*\(required)?", line)
        if item and sections:
            sections[-1][1][item.group(1)] = item.group(2) is not None
    return sections


def test_every_table_of_the_validator_has_one_section() -> None:
    named = [p for paths, _ in documented_tables() for p in paths]
    assert sorted(named) == sorted(schema.TABLES), "tables named in docs/targets.md headings"


def test_every_key_is_documented_and_every_documented_key_exists() -> None:
    for paths, keys in documented_tables():
        if not paths:
            continue  # a section about no table of its own
        accepted = {k for p in paths for k in schema.TABLES[p]}
        assert set(keys) == accepted, f"keys of {', '.join(paths) or 'the top level'}"


def test_required_top_level_keys_are_marked() -> None:
    top = next(keys for paths, keys in documented_tables() if paths == ("",))
    assert {k for k, required in top.items() if required} == set(schema.REQUIRED_TOP_KEYS)


def test_every_key_tuple_of_the_schema_belongs_to_a_table() -> None:
    """A new ``*_KEYS`` tuple must be listed in ``schema.TABLES`` (and so documented)."""
    tuples = {n for n in dir(schema) if n.endswith("_KEYS") and n != "REQUIRED_TOP_KEYS"}
    used = {n for n in tuples if getattr(schema, n) in schema.TABLES.values()}
    assert used == tuples
