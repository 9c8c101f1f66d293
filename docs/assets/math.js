// Typeset the math that pymdownx.arithmatex (generic mode) marks: <span class="arithmatex">\(...\)</span> inline
// and <div class="arithmatex">\[...\]</div> displayed. KaTeX is vendored under assets/katex/: nothing is fetched
// from another host. A formula KaTeX cannot parse shows its source in red (class katex-error), never a blank.
function typesetMath(root) {
  for (const element of root.querySelectorAll(".arithmatex")) {
    const source = element.textContent.trim();
    const display = source.startsWith("\\[");
    katex.render(source.slice(2, -2), element, {displayMode: display, throwOnError: false});
  }
}

document$.subscribe(({ body }) => typesetMath(body));
