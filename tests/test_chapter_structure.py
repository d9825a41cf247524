"""Every chapter has the parts the book promises a reader (README, "Every chapter").

Goals at the top, the library's own code printed from its module, display equations, at least
three exercises each with a folded solution, at least one exercise a code cell checks against the
library, "What we built" and further reading at the end. A chapter that loses one fails here.
"""

import re
from pathlib import Path

import pytest

CHAPTERS = sorted((Path(__file__).parent.parent / "chapters").glob("[0-9][0-9]_*.md"))


def blocks(text: str, directive: str) -> list[str]:
    """The bodies of the ```{directive} blocks of ``text`` (indented ones, in lists, too)."""
    return re.findall(r"^\s*```\{" + directive + r"\}(.*?)^\s*```", text, re.M | re.S)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_a_chapter_has_every_part(path):
    text = path.read_text()
    assert "**Learning goals.**" in text and "**Prerequisites.**" in text
    assert "## What we built" in text and "## Further reading" in text
    assert "show_code(" in text, "the library's code, printed from its module"
    assert blocks(text, "math") or "$$" in text, "display equations"
    exercises, solutions = blocks(text, "exercise"), blocks(text, "solution")
    assert len(exercises) >= 3 and len(solutions) == len(exercises)
    assert all(":class: dropdown" in s for s in solutions), "solutions are folded"
    checked = [c for c in blocks(text, "code-cell") if "# Exercise" in c]
    assert any("assert" in c for c in checked), "an exercise checked against the library in code"


def test_every_chapter_is_found():
    assert len(CHAPTERS) == 12
