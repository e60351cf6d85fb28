"""The README stays short and true: its quick-start facts come first, its links resolve, and its results
table is what the committed result files say (the same numbers scripts/plot_results.py draws)."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest
from dockerfile_checks import ROOT
from script_loader import load_script

README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _script(name: str) -> ModuleType:
    return load_script(f"scripts/{name}.py")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", markdown, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_readme_is_short_and_starts_with_what_a_first_run_needs() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300
    head = "\n".join(lines[:50])
    for needed in (
        "make demo",
        "make test",
        "RECDISTILL_PORT",
        "minutes",
        "GB",
        "PyPI",
        "~/.cache/recdistill",
    ):
        assert needed in head, needed


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text(encoding="utf-8")):
            broken.append(target)
    assert broken == []


def test_readme_results_table_matches_the_result_files() -> None:
    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- results:summary -->", 1)[1].split("<!-- /results:summary -->", 1)[0]
    rows = block.strip().splitlines()[2:]  # below the header and its rule
    capacity = _script("plot_capacity")
    expected = capacity.readme_rows()
    assert expected and len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert [c.strip().strip("*") for c in row.strip("|").split("|")] == want
    for name in capacity.DATASETS:
        assert f"capacity-{name}.json" in text  # the README names the files its numbers come from
    assert (ROOT / "docs/capacity.png").stat().st_size > 10_000
    assert "](docs/capacity.png)" in text
    # The earlier dim-200 → dim-20 study stays in docs/results.md with its picture.
    assert (ROOT / "docs/results.png").stat().st_size > 10_000
