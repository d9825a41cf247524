// Run in each page by tools/browser_test.py: what a reader sees, measured in the live DOM.
// Returns {problems, figures, labelled, equations, placeholders}.
(placeholderText) => {
  const problems = [];
  const article = document.querySelector("article") || document.body;
  const column = article.getBoundingClientRect();
  const label = (e) => (e.textContent || "").trim().replace(/\s+/g, " ").slice(0, 70);

  // Images: every one loaded and has a size.
  for (const img of document.querySelectorAll("img")) {
    if (!img.complete || img.naturalWidth === 0) problems.push(`image not loaded: ${img.src.slice(0, 90)}`);
  }

  // Math: rendered by KaTeX (its fonts in use), the MathML copy hidden, no raw TeX left.
  const katex = [...article.querySelectorAll(".katex")];
  for (const k of katex) {
    const mathml = k.querySelector(".katex-mathml");
    const shown = k.querySelector(".katex-html");
    if (!shown) { problems.push(`math without KaTeX HTML: ${label(k)}`); continue; }
    if (mathml) {
      const r = mathml.getBoundingClientRect();
      if (r.width > 2 && r.height > 2) problems.push(`math shown twice: ${label(k)}`);
    }
    const font = getComputedStyle(shown).fontFamily;
    if (!font.includes("KaTeX")) problems.push(`math not in KaTeX fonts (${font}): ${label(k)}`);
  }
  if (katex.length && !document.fonts.check("16px KaTeX_Main")) problems.push("KaTeX fonts not loaded");
  for (const e of article.querySelectorAll(".math, [class*='math-']")) {
    if (!e.querySelector(".katex") && !e.closest(".katex")) problems.push(`math not rendered: ${label(e)}`);
  }
  for (const e of article.querySelectorAll(".katex-error")) problems.push(`KaTeX error: ${label(e)}`);

  // Widgets: a kernel-needing placeholder must have a static fallback in its cell or the next.
  let placeholders = 0;
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    if (!walker.currentNode.textContent.includes(placeholderText)) continue;
    placeholders += 1;
    let cell = walker.currentNode.parentElement;
    while (cell.parentElement && cell.parentElement !== article && !cell.nextElementSibling) cell = cell.parentElement;
    const near = [cell, cell.nextElementSibling].filter(Boolean);
    const fallback = near.some((c) => c.querySelector("img, div.animation, div.cogvx-explorer"));
    if (!fallback) problems.push(`widget placeholder without a static fallback: ${label(cell)}`);
  }

  // Text cut off at the right edge: nothing scrolls sideways or sticks out of the column.
  for (const e of article.querySelectorAll("*")) {
    // Menus, buttons and screen-reader-only text are clipped on purpose.
    if (e.closest(".katex-mathml, .sr-only, button, nav, header, [role=menu]")) continue;
    if (!(e.textContent || "").trim()) continue;
    const r = e.getBoundingClientRect();
    if (r.width <= 2 || r.height <= 2 || !e.checkVisibility()) continue;
    const overflow = getComputedStyle(e).overflowX;
    if (overflow !== "visible" && e.scrollWidth > e.clientWidth + 2) {
      problems.push(`text cut at the right (${e.scrollWidth - e.clientWidth} px hidden or scrolled): ${label(e)}`);
    } else if (r.right > column.right + 2 && ["PRE", "P", "LI", "TD", "SPAN", "CODE"].includes(e.tagName)) {
      problems.push(`text past the right edge of the column by ${Math.round(r.right - column.right)} px: ${label(e)}`);
    }
  }

  const figures = article.querySelectorAll("figure, img").length;
  const labelled = [...article.querySelectorAll("figure[id]")].length;
  return { problems, figures, labelled, equations: katex.length, placeholders };
}
