"""The docs: relative links that resolve, every docs page reachable from the index, a short
README."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 260


def markdown_files() -> list[Path]:
    """Every Markdown file of the repository, outside hidden folders (.venv, caches)."""
    return sorted(
        p
        for p in ROOT.rglob("*.md")
        if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
    )


def anchors(path: Path) -> set[str]:
    """The heading anchors a code host gives a Markdown file (GitHub's rules)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", strip_code_blocks(path), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def strip_code_blocks(path: Path) -> str:
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)


LINK = re.compile(r"\]\(([^)\s]+)(?: \"[^\"]*\")?\)")


def links(path: Path) -> Iterator[str]:
    text = re.sub(r"`[^`\n]*`", "", strip_code_blocks(path))
    for match in LINK.finditer(text):
        target = match.group(1)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            yield target


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    return broken


def test_link_checker_finds_missing_files_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# Title\n\n## The `x` part\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md) [ok](b.md#the-x-part) [ok](#here) [web](https://example.com/none)\n"
        "## Here\n[bad](c.md) [bad](b.md#nowhere) `[code](d.md)`\n"
        "```\n[block](e.md)\n```\n"
    )
    assert broken_links(page) == ["c.md", "b.md#nowhere"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert not broken_links(path), f"broken links in {path.relative_to(ROOT)}"


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_every_docs_page_is_reachable_from_the_index() -> None:
    index = ROOT / "docs" / "README.md"
    reached = {index}
    todo = [index]
    while todo:
        page = todo.pop()
        for target in links(page):
            dest = (page.parent / target.partition("#")[0]).resolve()
            if dest.suffix == ".md" and dest not in reached and dest.is_relative_to(ROOT / "docs"):
                reached.add(dest)
                todo.append(dest)
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md")}
    assert not pages - reached, sorted(str(p.relative_to(ROOT)) for p in pages - reached)
