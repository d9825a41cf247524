"""Open every page of the built book in headless Chromium and fail on anything a reader would see
broken. Run after `make book`:

    python tools/browser_test.py [--html _build/html] [--shots _build/screenshots]

The site is served by `python -m http.server --bind 127.0.0.1 PORT` (a free port) and opened at
the server's root (its links are root-relative). A page fails on: a non-200 page or asset, a
console error, a request that leaves 127.0.0.1, an image that did not load, math not rendered by
KaTeX or shown twice, an animation without visible controls or that does not advance when played,
a widget placeholder without a static fallback beside it, an absolute path of the build machine,
text cut off at the right edge of the content column. Every page gets a full-page screenshot and
a viewport-sized one of its top under --shots; one line per page says what it holds.

The browser is Debian's `chromium` (`apt-get install -y chromium`), driven by playwright without
downloading a browser of its own.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import yaml
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PLACEHOLDER = "kernel connection is required"
JS = (Path(__file__).resolve().parent / "browser_checks.js").read_text()


def page_slugs() -> list[str]:
    """The URL path of every page in myst.yml's toc, in order (the first page is the index)."""

    def files(entries: list[dict]) -> list[str]:
        out = []
        for e in entries:
            out += [e["file"]] if "file" in e else []
            out += files(e.get("children", []))
        return out

    toc = yaml.safe_load((ROOT / "myst.yml").read_text())["project"]["toc"]
    stems = [Path(f).stem for f in files(toc)]
    return [""] + [re.sub(r"^\d+_", "", s).replace("_", "-") for s in stems[1:]]


def serve(html: Path) -> tuple[subprocess.Popen, str]:
    """Serve ``html`` on a free port of 127.0.0.1; returns the server and its base URL."""
    for _ in range(5):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
        server = subprocess.Popen(
            cmd, cwd=html, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(50):
            try:
                urllib.request.urlopen(base + "/", timeout=1).close()
                return server, base
            except OSError:
                if server.poll() is not None:
                    break  # the port was taken between our check and its bind: try another
                time.sleep(0.1)
        server.kill()
        server.wait()
    raise SystemExit(f"could not start a web server over {html}")


def watch(page: Page, problems: list[str], root_path: str) -> None:
    """Record every failed or foreign request, non-200 response, console error, local path."""

    def on_request(req):
        url = urlparse(req.url)
        if url.scheme in ("data", "blob", "about"):
            return
        if url.hostname != "127.0.0.1":
            problems.append(f"request leaves 127.0.0.1: {req.url}")

    def on_response(resp):
        if urlparse(resp.url).hostname != "127.0.0.1":
            return
        if resp.status != 200:
            problems.append(f"HTTP {resp.status}: {resp.url}")
            return
        kind = resp.headers.get("content-type", "")
        if any(t in kind for t in ("html", "json", "javascript", "css", "text")):
            try:
                if root_path in resp.text():
                    problems.append(f"build machine path {root_path} in {resp.url}")
            except Exception:  # a body the browser already discarded (e.g. a redirect)
                pass

    page.on("request", on_request)
    page.on("response", on_response)
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} ({r.failure})"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))


def check_animations(page: Page, problems: list[str]) -> int:
    """Every matplotlib JS animation has visible buttons and advances when played."""
    anims = page.locator("div.animation")
    for i in range(anims.count()):
        anim = anims.nth(i)
        anim.scroll_into_view_if_needed()
        buttons = anim.locator("button")
        small = [b.bounding_box() for b in buttons.all()]
        if not small or any(b is None or b["height"] < 10 or b["width"] < 10 for b in small):
            problems.append(f"animation {i + 1}: controls not visible ({small})")
            continue
        icon = anim.locator("button i.fa").first.evaluate("e => getComputedStyle(e).fontFamily")
        if "FontAwesome" not in icon:
            problems.append(f"animation {i + 1}: button icons are not Font Awesome ({icon})")
        slider = anim.locator("input[type=range]").first
        before = slider.input_value()
        anim.locator("button:has(i.fa-play)").first.click()
        page.wait_for_timeout(1200)
        after = slider.input_value()
        anim.locator("button:has(i.fa-pause)").first.click()
        if after == before:
            problems.append(f"animation {i + 1}: frame {before} did not advance when played")
    return anims.count()


def check_explorers(page: Page, problems: list[str]) -> int:
    """Every precomputed control (chapters/book_controls.py) changes its picture when moved."""
    boxes = page.locator("div.cogvx-explorer")
    for i in range(boxes.count()):
        box = boxes.nth(i)
        box.scroll_into_view_if_needed()
        img = box.locator("img").first
        before = img.get_attribute("src")
        control = box.locator("input[type=range], select").first
        if control.evaluate("e => e.tagName") == "SELECT":
            options = control.locator("option").all_inner_texts()
            control.select_option(label=options[-1] if options[0] != options[-1] else options[0])
        else:
            control.evaluate("e => { e.value = e.max; e.dispatchEvent(new Event('input')); }")
        if img.get_attribute("src") == before:
            problems.append(f"explorer {i + 1}: the picture did not change with its control")
    return boxes.count()


def settle(page: Page) -> None:
    """Scroll through the page so that every output is attached, and let its loads finish."""
    height = page.evaluate("document.body.scrollHeight")
    for y in range(0, height, 700):
        page.evaluate(f"window.scrollTo(0, {y})")
        page.wait_for_timeout(60)
    page.wait_for_load_state("networkidle")
    page.evaluate("document.fonts.ready")
    page.wait_for_timeout(500)


def check_page(page: Page, url: str, shots: Path, name: str) -> tuple[list[str], str]:
    problems: list[str] = []
    watch(page, problems, str(ROOT))
    resp = page.goto(url, wait_until="networkidle")
    if resp is None or resp.status != 200:
        problems.append(f"page {url}: HTTP {resp.status if resp else 'no response'}")
    settle(page)
    facts = page.evaluate(JS, PLACEHOLDER)
    problems += facts["problems"]
    # Screenshots before the animations are played and the controls moved: the page as it loads.
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(200)
    page.screenshot(path=str(shots / f"{name}-top.png"))
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    animations = check_animations(page, problems)
    explorers = check_explorers(page, problems)
    summary = (f"{facts['figures']} figures ({facts['labelled']} labelled), {facts['equations']} "
               f"equations, {animations} animations, {explorers} precomputed controls, "
               f"{facts['placeholders']} widget placeholders")  # fmt: skip
    return problems, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--shots", type=Path, default=ROOT / "_build" / "screenshots")
    args = parser.parse_args()
    if not (args.html / "index.html").is_file():
        raise SystemExit(f"no site at {args.html}: run `make book` first")
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"no {CHROMIUM}: apt-get update && apt-get install -y chromium")
    args.shots.mkdir(parents=True, exist_ok=True)
    server, base = serve(args.html)
    failed = 0
    start = time.perf_counter()
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            browser = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=ARGS, headless=True,
                viewport={"width": 1280, "height": 900},
            )  # fmt: skip
            for slug in page_slugs():
                page = browser.new_page()
                url = f"{base}/{slug}/" if slug else f"{base}/"  # http.server redirects /x to /x/
                problems, summary = check_page(page, url, args.shots, slug or "index")
                page.close()
                failed += bool(problems)
                print(f"{'FAIL' if problems else 'ok  '} /{slug}: {summary}", flush=True)
                for problem in dict.fromkeys(problems):
                    print(f"       {problem}")
            browser.close()
    finally:
        server.terminate()
        server.wait()
    print(f"{len(page_slugs()) - failed}/{len(page_slugs())} pages clean in "
          f"{time.perf_counter() - start:.0f} s; screenshots in {args.shots}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
