"""README.md is the front page: short, the fresh-machine commands first, every document linked.

What it used to hold in full (settings, log events, the design) is in docs/, checked by
tests/test_docs.py.
"""

from __future__ import annotations

import re

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_fresh_machine_commands_come_first() -> None:
    top = README[: README.index("\n## ", README.index("\n## ") + 1)]
    assert "make demo" in top
    assert "make test" in top
    assert top.index("make demo") < top.index("make test")


def test_the_readme_is_a_front_page() -> None:
    lines = README.count("\n")
    assert lines > 50  # the count itself works
    assert lines <= 250, f"README.md has {lines} lines; move detail into docs/"


def test_every_document_is_linked_from_the_readme() -> None:
    docs = REPO / "docs"
    linked = {(REPO / t.partition("#")[0]).resolve() for t in _LINK.findall(README)}
    assert (docs / "design.md").resolve() in linked  # the scan itself works
    unlinked = sorted(p.name for p in docs.glob("*.md") if p.resolve() not in linked)
    assert unlinked == [], f"README.md links no {unlinked}"


def test_the_readme_says_where_development_code_lives() -> None:
    assert "worker/dev/" in README
    assert "ackworker run" in README
