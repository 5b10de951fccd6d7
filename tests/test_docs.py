"""The README stays short and every link in it and in docs/ resolves: the file, and the
heading an anchor names."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from bench import docs as bench_docs

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text("utf-8"), flags=re.DOTALL)
    return {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_the_readme_is_under_200_lines() -> None:
    assert len((ROOT / "README.md").read_text("utf-8").splitlines()) < 200


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_link_resolves(document: Path) -> None:
    text = re.sub(r"```.*?```", "", document.read_text("utf-8"), flags=re.DOTALL)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not fetched (no network in tests)
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
    assert broken == []


def test_the_readme_links_every_reference_document() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    for name in ("architecture", "configuration", "protocol", "operations", "benchmarks"):
        assert f"(docs/{name}.md)" in readme


def test_docs_benchmarks_md_shows_the_latest_results() -> None:
    results = json.loads(bench_docs.RESULTS.read_text("utf-8"))
    text = bench_docs.DOC.read_text("utf-8")
    assert bench_docs.render_doc(text, results) == text, (
        "docs/benchmarks.md is stale: run .venv/bin/python -m bench.docs"
    )
    assert importlib.import_module("bench.report").render(results) in text
