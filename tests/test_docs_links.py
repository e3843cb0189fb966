"""Every relative link and image in README.md, MODEL_CARD.md, CHANGELOG.md and docs/*.md resolves: the file exists
and, for a `#fragment`, the target file has a heading with that GitHub anchor. No user-facing doc points outside
the repository (`../shared` and the like), and the README stays short."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "MODEL_CARD.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


def _anchors(path: Path) -> set[str]:
    anchors, seen = set(), {}
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)  # code blocks hold no links
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_relative_links_resolve(doc):
    assert doc.exists(), f"{doc.relative_to(REPO)} is missing"
    for link in _links(doc):
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        target, _, fragment = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.relative_to(REPO)}: {link} does not exist"
        assert REPO in path.parents or path == REPO, f"{doc.relative_to(REPO)}: {link} points outside the repository"
        if fragment and path.suffix == ".md":
            assert fragment in _anchors(path), f"{doc.relative_to(REPO)}: no heading #{fragment} in {path.name}"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_no_paths_outside_the_checkout(doc):
    assert "../shared" not in doc.read_text(), f"{doc.relative_to(REPO)} names ../shared"


def test_readme_is_short_and_its_first_60_lines_say_what_to_do():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250)"
    first = "\n".join(lines[:60])
    for needed in ("scripts/serve", "scripts/test", "http://127.0.0.1:8000/", "docs/api.md"):
        assert needed in first, f"the README's first 60 lines do not mention {needed}"
