"""Every relative link in README.md, docs/ and the benchmark result pages names a file that exists, and every
#anchor one of that page's headings, as GitHub renders them: the README's tables point into long pages
(docs/performance.md is a journal of passes), and a heading renamed there silently breaks a link here.

The anchors are slugged from the heading's Markdown source, which is GitHub's rendered text for the headings
this project writes (words, numbers, code spans, punctuation); a heading with emphasis, a link or an HTML entity
in it would need the rendered text. Inline links only: reference-style links are not checked."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks" / "results").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading):
    """GitHub's slug: lower case, punctuation other than '-' and '_' dropped, spaces made '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    found, repeats, in_fence = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        heading = None if in_fence else re.match(r"^#{1,6}\s+(.*)", line)
        if heading:
            slug = github_anchor(heading.group(1))
            count = repeats.get(slug, 0)
            repeats[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(page):
    broken = []
    for match in LINK.finditer(page.read_text(encoding="utf-8")):
        target = match.group(1)
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target}: no heading with that anchor")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_the_checker_catches_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# A heading, with `code` (and 2 parts)\n## Twice\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading-with-code-and-2-parts) [ok](other.md#twice-1) [ok](#here)\n# Here\n"
                    "[bad](missing.md) [bad](other.md#nowhere) [web](https://example.com/x#y)\n")
    assert broken_links(page) == ["missing.md: no such file", "other.md#nowhere: no heading with that anchor"]
