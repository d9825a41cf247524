"""Make the HTML book build and read offline.

Jupyter Book 2 downloads its HTML theme from the MyST template service, and the pages it writes
load KaTeX, Font Awesome and a few other files from CDNs. This module

- puts a local copy of the book theme where Jupyter Book looks for its download and installs the
  theme's runtime packages with ``npm ci`` (the npm registry is reachable, the template service
  is not);
- installs the pinned npm packages of ``tools/book_assets`` (katex, font-awesome 4.7.0 for the
  theme, 4.4.0 for matplotlib's JS animations) and rewrites every CDN address in ``_build/html``
  to those local copies, so the site makes no request that leaves its own server;
- removes the build machine's absolute paths from the site;
- ends the ``jupyter_server`` that ``--execute`` leaves running.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
THEME_CACHE = ROOT / "_build" / "templates" / "site" / "myst" / "book-theme"
SHARED_THEME = ROOT.parent / "shared" / "book-theme"
ASSETS = Path(__file__).resolve().parent / "book_assets"
HTML = ROOT / "_build" / "html"
OFFLINE = "/_offline"  # where the local copies live in the site (its links are root-relative)
NO_THEME = (
    "no book theme found: set BOOK_THEME_DIR or place the theme at ../shared/book-theme "
    "(with internet, BOOK_THEME_DIR=download lets Jupyter Book download it)"
)

# CDN prefix -> local folder under OFFLINE. The theme asks for the first two, matplotlib's
# to_jshtml for the third, ipympl's stylesheet and thebe's MathJax are requested by the theme
# on every page although nothing in this book uses them: they get empty local stand-ins.
REWRITES = {
    "https://cdn.jsdelivr.net/npm/katex@0.15.2/": f"{OFFLINE}/katex/",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/4.7.0/": f"{OFFLINE}/font-awesome/",
    "https://maxcdn.bootstrapcdn.com/font-awesome/4.4.0/": f"{OFFLINE}/font-awesome-4.4.0/",
    "https://cdn.jsdelivr.net/npm/jupyter-matplotlib@0.11.3/css/mpl_widget.css": (
        f"{OFFLINE}/stubs/mpl_widget.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.5/MathJax.js": (
        f"{OFFLINE}/stubs/MathJax.js"
    ),
}
TEXT_SUFFIXES = {".html", ".js", ".json", ".css", ".txt", ".xml"}


def npm_ci(folder: Path) -> None:
    """Install ``folder``'s locked packages; no install scripts run."""
    cmd = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    subprocess.run(cmd, cwd=folder, check=True)


def prepare_theme() -> None:
    """Copy the book theme to where Jupyter Book would download it and install its packages."""
    source = os.environ.get("BOOK_THEME_DIR") or (SHARED_THEME if SHARED_THEME.is_dir() else "")
    if source == "download":
        return  # Jupyter Book fetches the theme itself (needs the internet)
    if not source or not (Path(source) / "template.yml").is_file():
        raise SystemExit(NO_THEME + (f" ({source} has no template.yml)" if source else ""))
    shutil.rmtree(THEME_CACHE, ignore_errors=True)
    # The shared copy may be read-only: copy the files, not their modes.
    shutil.copytree(source, THEME_CACHE, copy_function=shutil.copyfile,
                    ignore=shutil.ignore_patterns("node_modules"))  # fmt: skip
    npm_ci(THEME_CACHE)


def check_port_free(port: int = 3000) -> None:
    """The theme's server renders the pages on localhost:3000 during the HTML export."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is in use: the book theme's server needs it during "
                             "the HTML export; stop whatever listens there")  # fmt: skip


def install_assets() -> None:
    """Copy the pinned katex and font-awesome packages into the site under OFFLINE."""
    npm_ci(ASSETS)
    modules = ASSETS / "node_modules"
    target = HTML / OFFLINE.lstrip("/")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(modules / "katex" / "dist", target / "katex" / "dist")
    for name in ("font-awesome", "font-awesome-4.4.0"):
        for sub in ("css", "fonts"):
            shutil.copytree(modules / name / sub, target / name / sub)
    shutil.copytree(ASSETS / "stubs", target / "stubs")


def rewrite_site() -> list[str]:
    """Point every CDN address at the local copies and drop the build machine's paths.

    Returns the files changed. Jupyter Book writes absolute paths (e.g. of the bibliography)
    into the page data; the site needs none of them, so ``/abs/root/`` becomes ``""``.
    """
    changed = []
    root = f"{ROOT}{os.sep}"
    for path in HTML.rglob("*"):
        if path.suffix not in TEXT_SUFFIXES or OFFLINE.lstrip("/") in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        new = text.replace(root, "")
        for cdn, local in REWRITES.items():
            new = new.replace(cdn, local)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(str(path.relative_to(HTML)))
    return changed


def stop_servers(marker: str) -> list[int]:
    """End the processes the build left behind (``python -m jupyter_server``), by pid.

    The build runs with ``COGVX_BOOK_BUILD=<marker>`` in its environment; its children inherit
    it, so this finds exactly this build's leftovers and never another user's server.
    """
    ended = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid() or proc.environ().get("COGVX_BOOK_BUILD") != marker:
                continue
            proc.terminate()
            ended.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    _, alive = psutil.wait_procs(ended, timeout=10)
    for proc in alive:
        proc.kill()
    return [p.pid for p in ended]
