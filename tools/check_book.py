"""Build the book; fail on any page error, failed cell, or unresolved reference or citation.

    python tools/check_book.py          # offline: parse + execute every page (`make test`)
    python tools/check_book.py --html   # HTML site in _build/html (needs the theme: README)

Offline, Jupyter Book 2 parses and executes every page but cannot fetch its HTML theme, so its last
step fails and its exit code is 1 even when every page is fine. We therefore judge the build by
its per-page messages (⛔️ errors, ⚠️ warnings) and by the page JSON it writes, not by the exit code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
THEME_CACHE = ROOT / "_build" / "templates" / "site" / "myst" / "book-theme"


def toc_files(entries: list[dict]) -> list[str]:
    files = []
    for entry in entries:
        if "file" in entry:
            files.append(entry["file"])
        files += toc_files(entry.get("children", []))
    return files


def run_build(*flags: str) -> tuple[int, str]:
    env = dict(os.environ)
    # Jupyter Book starts `python -m jupyter_server`: it must be this environment's python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = ["jupyter", "book", "build", *flags, "--execute"]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc.returncode, re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)


def main() -> int:
    html = "--html" in sys.argv[1:]
    if html and os.environ.get("BOOK_THEME_DIR"):
        # A local copy of the book theme stands in for the download that needs the internet.
        shutil.rmtree(THEME_CACHE, ignore_errors=True)
        shutil.copytree(os.environ["BOOK_THEME_DIR"], THEME_CACHE)
    # Without its cache the build re-executes every notebook instead of reusing old outputs.
    for stale in ("site", "execute", "html"):
        shutil.rmtree(ROOT / "_build" / stale, ignore_errors=True)
    code, log = run_build("--html" if html else "--site")
    page_log = log.split("Querying template metadata")[0]
    problems = [line for line in page_log.splitlines() if line.startswith(("⛔", "⚠"))]

    config = yaml.safe_load((ROOT / "myst.yml").read_text())
    pages = toc_files(config["project"]["toc"])
    built = {p.stem for p in (ROOT / "_build" / "site" / "content").glob("*.json")}
    for i, page in enumerate(pages):
        slug = "index" if i == 0 else re.sub(r"^\d+_", "", Path(page).stem).replace("_", "-")
        if slug not in built:
            problems.append(f"⛔ {page}: no page was written (slugs written: {sorted(built)})")

    if problems:
        print(log)
        print(f"\n{len(problems)} problem(s) in the book:\n" + "\n".join(problems))
        return 1
    if html:
        if code:
            print(log)
            print("\nHTML build failed: the theme needs the internet or BOOK_THEME_DIR (README).")
            return code
        print(f"HTML site in {ROOT / '_build' / 'html'}")
    print(f"book OK: {len(pages)} pages parsed and executed, all references resolved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
