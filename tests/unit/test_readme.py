"""The README's table of contents lists its sections, in order, with anchors that GitHub makes."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
TOC_START, TOC_END = "<!-- contents -->", "<!-- /contents -->"


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def contents(text: str) -> list[str]:
    body = text.partition(TOC_END)[2]
    lines = []
    for line in re.findall(r"^(#{2,3}) (.+)$", body, flags=re.MULTILINE):
        level, title = line
        indent = "  " * (len(level) - 2)
        lines.append(f"{indent}- [{title.replace('`', '')}](#{anchor(title)})")
    return lines


def test_the_table_of_contents_is_the_sections() -> None:
    text = README.read_text()
    assert TOC_START in text and TOC_END in text
    listed = text.partition(TOC_START)[2].partition(TOC_END)[0].strip().splitlines()
    expected = contents(text)
    assert listed == expected, "\n".join(
        ["the README's contents should read:", TOC_START, *expected, TOC_END]
    )
