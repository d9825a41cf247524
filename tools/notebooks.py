"""Keep the chapters' two files in step.

Each chapter is a MyST markdown notebook ``chapters/NN_name.md`` (the source: clean diffs, read by
Jupyter Book, opened as a notebook by jupytext) paired with ``chapters/NN_name.ipynb``, which
stores only the outputs that nbval compares: those of cells whose first line is
``# NBVAL_CHECK_OUTPUT``. Figures and timings are never stored, so the ``.ipynb`` stays small.

    python tools/notebooks.py sync [chapters/01_x.md ...]   # execute, store checked outputs
    python tools/notebooks.py check                          # fail if a pair has drifted apart
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
MARK = "# NBVAL_CHECK_OUTPUT"


def code_sources(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def sync(md: Path) -> None:
    nb = jupytext.read(md)
    start = time.perf_counter()
    resources = {"metadata": {"path": str(md.parent)}}
    NotebookClient(nb, timeout=600, kernel_name="python3", resources=resources).execute()
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"  # stable ids and no timestamps keep the diffs of .ipynb readable
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        # nbval treats a cell without an execution count as never run: keep the counts of the
        # cells whose outputs stay.
        if not cell.source.lstrip().startswith(MARK):
            cell.outputs = []
            cell.execution_count = None
        for out in cell.outputs:
            out.pop("execution_count", None)
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, md.with_suffix(".ipynb"))
    print(f"{md.name}: executed in {time.perf_counter() - start:.1f} s")


def check() -> int:
    errors = []
    mds = sorted(CHAPTERS.glob("*.md"))
    for md in mds:
        ipynb = md.with_suffix(".ipynb")
        if not ipynb.exists():
            errors.append(f"{ipynb.name} is missing: run `make notebooks`")
        elif code_sources(jupytext.read(md)) != code_sources(nbformat.read(ipynb, as_version=4)):
            errors.append(f"{md.name} and {ipynb.name} have drifted apart: run `make notebooks`")
    for ipynb in sorted(CHAPTERS.glob("*.ipynb")):
        if not ipynb.with_suffix(".md").exists():
            errors.append(f"{ipynb.name} has no {ipynb.stem}.md source")
    print("\n".join(errors) or f"{len(mds)} chapter pairs in step")
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("sync", "check"):
        sys.exit(__doc__)
    if sys.argv[1] == "check":
        sys.exit(check())
    for path in [Path(p) for p in sys.argv[2:]] or sorted(CHAPTERS.glob("*.md")):
        sync(path)
