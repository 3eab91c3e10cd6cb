"""Every design reference in fastsample's source resolves inside the repository.

A reference is ``docs/<path>.md`` with an optional ``#anchor``; the file must exist and the anchor must be the
slug of one of its headings (GitHub's rule: lower case, punctuation dropped, spaces to hyphens). Bare names of
the design notes (``solvers.md §2``) are refused: they point outside the repository.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"docs/[\w./-]+\.md(?:#[\w-]+)?")
BARE_NOTE = re.compile(
    r"(?<![\w/])(solvers|guidance|architecture|caching|evaluation|training_eval|cache_attention)\.md"
)


def slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", path.read_text(), re.M)}


def docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = [
        tree,
        *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))),
    ]
    return [doc for doc in (ast.get_docstring(n, clean=False) for n in nodes) if doc]


def broken(reference: str) -> str | None:
    file, _, anchor = reference.partition("#")
    path = ROOT / file
    if not path.is_file():
        return f"{file} does not exist"
    if anchor and anchor not in anchors(path):
        return f"{file} has no heading #{anchor}"
    return None


SOURCES = sorted((ROOT / "fastsample").rglob("*.py"))


def test_every_docstring_reference_resolves():
    found, problems = 0, []
    for source in SOURCES:
        for doc in docstrings(source):
            for reference in REFERENCE.findall(doc):
                found += 1
                problem = broken(reference)
                if problem:
                    problems.append(f"{source.relative_to(ROOT)}: {reference}: {problem}")
    assert found >= 20  # not vacuous: 23 docstring references when this test was written
    assert problems == []


def test_no_reference_to_a_design_note_outside_the_repository():
    bare = []
    for source in SOURCES:
        text = source.read_text()
        for match in BARE_NOTE.finditer(text):
            if not text[: match.start()].endswith("docs/design/"):
                line = text.count("\n", 0, match.start()) + 1
                bare.append(f"{source.relative_to(ROOT)}:{line}: {match.group(0)}")
    assert bare == []


def test_every_reference_in_the_source_and_the_design_docs_resolves():
    """Comments, report strings and the design pages' own links to each other."""
    problems = []
    for source in SOURCES:
        for reference in REFERENCE.findall(source.read_text()):
            if broken(reference):
                problems.append(f"{source.relative_to(ROOT)}: {reference}: {broken(reference)}")
    for page in sorted((ROOT / "docs" / "design").glob("*.md")):
        for target, anchor in re.findall(r"\]\(([\w.-]+\.md)(?:#([\w-]+))?\)", page.read_text()):
            reference = f"docs/design/{target}" + (f"#{anchor}" if anchor else "")
            if broken(reference):
                problems.append(f"{page.name}: {reference}: {broken(reference)}")
    assert problems == []


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("The oracle solver table", "the-oracle-solver-table"),
        ("Adaptive Guidance and LinearAG", "adaptive-guidance-and-linearag"),
    ],
)
def test_slug(heading, expected):
    assert slug(heading) == expected


def test_a_broken_reference_is_reported():
    assert (
        broken("docs/design/solvers.md#no-such-heading")
        == "docs/design/solvers.md has no heading #no-such-heading"
    )
    assert broken("docs/design/nope.md") == "docs/design/nope.md does not exist"
    assert broken("docs/design/solvers.md#coordinates") is None
