"""Controls that work on the static web page of the book, where no Jupyter kernel runs, and the
printing of the library's own code on the page.

An ``ipywidgets.interact`` needs a kernel to redraw; the book's HTML pages have none. ``explorer``
draws the figure for every combination of a few parameter values while the chapter executes and
writes a small HTML + JavaScript control (one slider per parameter) that switches between the
stored pictures, in JupyterLab and on the static page alike. Not library code: only the chapters'
presentation, which is why it lives beside them.
"""

from __future__ import annotations

import base64
import html
import inspect
import io
import itertools
import json
import textwrap
import uuid
from collections.abc import Callable

import matplotlib.pyplot as plt
from IPython.display import HTML
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def explorer(
    draw: Callable[..., plt.Figure], alt: str, start: dict | None = None, **choices: list
) -> HTML:
    """An HTML + JS control over figures precomputed for every combination of ``choices``.

    ``draw(**params)`` returns a matplotlib figure for one combination; ``choices`` maps each
    parameter to its values in slider order; ``start`` picks the values shown first (default:
    the first of each); ``alt`` describes the picture.
    """
    names = list(choices)
    start = {n: (start or {}).get(n, v[0]) for n, v in choices.items()}
    pictures = {
        "|".join(map(str, combo)): _png(draw(**dict(zip(names, combo, strict=True))))
        for combo in itertools.product(*choices.values())
    }
    box = f"explorer-{uuid.uuid4().hex[:8]}"
    sliders = "".join(
        f'<label style="margin-right:1.5em">{html.escape(n)} '
        f'<input type="range" min="0" max="{len(v) - 1}" value="{v.index(start[n])}" step="1" '
        f"data-values='{html.escape(json.dumps([str(x) for x in v]))}' "
        f"oninput=\"cogvxExplore('{box}')\"> <b>{html.escape(str(start[n]))}</b></label>"
        for n, v in choices.items()
    )
    first = pictures["|".join(str(start[n]) for n in names)]
    return HTML(
        f'<div class="cogvx-explorer" id="{box}"><div>{sliders}</div>'
        f'<img alt="{html.escape(alt)}" src="{first}" style="max-width:100%"></div>'
        f"<script>window.cogvxPictures = window.cogvxPictures || {{}};"
        f"window.cogvxPictures['{box}'] = {json.dumps(pictures)};"
        f"window.cogvxExplore = {_SWITCH};</script>"
    )


# Reads every slider of one control, shows their values and the picture for that combination.
_SWITCH = """function (box) {
  var root = document.getElementById(box), key = [];
  root.querySelectorAll('input[type=range]').forEach(function (s) {
    var value = JSON.parse(s.dataset.values)[s.value];
    s.nextElementSibling.textContent = value;
    key.push(value);
  });
  root.querySelector('img').src = window.cogvxPictures[box][key.join('|')];
}"""


class LibraryCode:
    """The source of a library function, class or method, shown with its file and line numbers.

    Read from the module at run time (``inspect``), so the page always shows the code that runs:
    syntax-coloured HTML in JupyterLab and on the web page, plain text elsewhere.
    """

    def __init__(self, obj: object) -> None:
        obj = inspect.unwrap(obj)  # a decorated function (@torch.no_grad()): its own file
        lines, first = inspect.getsourcelines(obj)
        path = inspect.getsourcefile(obj) or "?"
        self.where = path[path.rfind("cogvx_mini") :] if "cogvx_mini" in path else path
        self.source = textwrap.dedent("".join(lines))
        self.span = f"lines {first}–{first + len(lines) - 1}"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        # The library's lines are up to 99 columns: a smaller type fits them whole in the
        # page's column at desktop width instead of wrapping each long line.
        style = "font-size:0.72rem"
        formatter = HtmlFormatter(noclasses=True, nobackground=True, prestyles=style)
        body = highlight(self.source, PythonLexer(), formatter)
        head = (
            f"<div style='font-size:85%;opacity:.75'><code>{self.where}</code>, {self.span}</div>"
        )
        return {
            "text/html": head + body,
            "text/plain": f"# {self.where}, {self.span}\n{self.source}",
        }


def show_code(*objects: object) -> None:
    """Display the library's source of each object (function, class, method) in turn."""
    from IPython.display import display

    for obj in objects:
        display(LibraryCode(obj))
