"""MkDocs hook: render the few reStructuredText constructs droplab's docstrings use, in the generated API pages.

The docstrings are written for ``help()`` and Sphinx-style readers (``:math:`q```, ``.. warning::``,
``Example::``); mkdocstrings passes them through as Markdown, where those markers would show literally. This
rewrites them in the rendered HTML: a ``:math:`` (or ``:func:``, ``:class:``, ...) role becomes plain code, a
``.. warning::`` paragraph a Material warning box, and ``Example::`` a bold ``Example:``. Nothing is fetched (no
MathJax): the build stays offline.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:math|mod|func|class|meth|attr|data|exc|obj):(<code>)~?")
WARNING = re.compile(r"<p>\.\. (warning|note)::\s*(.*?)</p>", re.DOTALL)
DOUBLE_COLON = re.compile(r"<p>(Example|Examples|Recipe[^<]*?)::</p>")


def rst_to_html(html: str) -> str:
    html = ROLE.sub(r"\1", html)
    html = WARNING.sub(lambda m: f'<div class="admonition {m[1]}"><p class="admonition-title">{m[1].title()}</p>'
                                 f"<p>{m[2].strip()}</p></div>", html)
    return DOUBLE_COLON.sub(r"<p><strong>\1:</strong></p>", html)


def on_page_content(html: str, page, config, files) -> str:
    return rst_to_html(html) if page.file.src_uri.startswith("api/") else html
