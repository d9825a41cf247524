"""Build the book; fail on any page error, failed cell, or unresolved reference or citation.

    python tools/check_book.py          # parse + execute every page (`make book-check`)
    python tools/check_book.py --html   # the same, and the HTML site in _build/html (`make book`)

The HTML build makes every check the offline one makes, from one execution of every page, so
`make test` runs only it. Both start from an empty execution cache: Jupyter Book keys cached
outputs by the cells' code, so outputs made by older library code would go unnoticed.

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
import uuid
from pathlib import Path

import offline_site
import yaml

ROOT = Path(__file__).resolve().parent.parent


def toc_files(entries: list[dict]) -> list[str]:
    files = []
    for entry in entries:
        if "file" in entry:
            files.append(entry["file"])
        files += toc_files(entry.get("children", []))
    return files


def run_build(*flags: str) -> tuple[int, str]:
    # The marker finds the jupyter_server this build starts and leaves running (stopped below).
    marker = uuid.uuid4().hex
    env = dict(os.environ, COGVX_BOOK_BUILD=marker)
    # Jupyter Book starts `python -m jupyter_server`: it must be this environment's python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = ["jupyter", "book", "build", *flags, "--execute"]
    print("$", " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    finally:
        ended = offline_site.stop_servers(marker)
        print(f"ended {len(ended)} process(es) the build left running: pids {ended}")
    return proc.returncode, re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)


def main() -> int:
    html = "--html" in sys.argv[1:]
    if html:
        # A local copy of the book theme stands in for the download that needs the internet.
        offline_site.prepare_theme()
        offline_site.check_port_free()
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
            print("\nHTML build failed (README, section 'The book').")
            return code
        offline_site.install_assets()
        changed = offline_site.rewrite_site()
        print(f"offline: {len(changed)} files of the site point at local copies instead of CDNs")
        print(f"HTML site in {ROOT / '_build' / 'html'}")
    print(f"book OK: {len(pages)} pages parsed and executed, all references resolved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
