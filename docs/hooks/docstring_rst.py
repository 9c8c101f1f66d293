"""Griffe extension: turn the reStructuredText that droplab's docstrings use into Markdown the site renders.

The docstrings are written for ``help()`` and for a reader of PyTorch's docs (``:math:`q```, ``.. math::``,
``:class:`~droplab.nn.Dropout```, ``.. warning::``, ``Example::``). mkdocstrings passes docstrings through as
Markdown, where those markers would show literally, so before it renders them this rewrites, in each docstring:

* ``:math:`x``` into ``\\(x\\)`` and a ``.. math::`` block into ``$$ ... $$``: pymdownx.arithmatex marks them and
  the vendored KaTeX (``docs/assets/katex``) typesets them in the browser, with nothing fetched from elsewhere;
* ``:class:`` / ``:func:`` / ``:meth:`` / ``:mod:`` / ... roles into cross-references: a link to the entry when
  the API reference documents the object (resolved in the docstring's own scope), plain code otherwise;
* ``.. warning::`` and ``.. note::`` into Material admonitions, and ``Example::`` blocks into highlighted
  ``pycon`` code blocks under a bold "Example:".

mkdocs.yml loads it with ``extensions: [docs/hooks/docstring_rst.py:RstDocstrings]``.
"""

from __future__ import annotations

import html
import re
import textwrap
from collections.abc import Callable

try:  # the site build has griffe (mkdocstrings' loader); the unit tests import only the text functions
    import griffe
except ImportError:  # pragma: no cover
    griffe = None

ROLE = re.compile(r":(math|mod|func|class|meth|attr|data|exc|obj):`([^`]+)`")
MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<rest>.*)$")
ADMONITION = re.compile(r"^(?P<indent>[ \t]*)\.\. (?P<kind>warning|note)::[ \t]*(?P<rest>.*)$")
LITERAL_BLOCK = re.compile(r"^(?P<indent>[ \t]*)(?P<title>Examples?|Recipe[^:]*)::[ \t]*$")


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def indented_block(lines: list[str], start: int, indent: int) -> int:
    """The end (exclusive) of the block after ``lines[start - 1]``: blank lines or lines indented past ``indent``."""
    end = start
    while end < len(lines) and (not lines[end].strip() or indent_of(lines[end]) > indent):
        end += 1
    while end > start and not lines[end - 1].strip():  # trailing blank lines are not part of it
        end -= 1
    return end


def rewrite_blocks(text: str) -> str:
    """``.. math::``, ``.. warning::`` / ``.. note::`` and ``Example::`` blocks, as Markdown."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        math, admonition, literal = MATH_DIRECTIVE.match(line), ADMONITION.match(line), LITERAL_BLOCK.match(line)
        match = math or admonition or literal
        if not match:
            out.append(line)
            i += 1
            continue
        pad, level = match["indent"], indent_of(line)
        end = indented_block(lines, i + 1, level)
        body = textwrap.dedent("\n".join(lines[i + 1:end])).strip("\n").splitlines()
        if math:
            formula = [match["rest"]] if match["rest"] else []
            out += ["", f"{pad}$$", *(pad + b for b in formula + body), f"{pad}$$", ""]
        elif admonition:
            first = [match["rest"]] if match["rest"] else []
            out += ["", f"{pad}!!! {match['kind']}", *(f"{pad}    {b}" if b else "" for b in first + body), ""]
        else:
            language = "pycon" if any(b.lstrip().startswith(">>>") for b in body) else "python"
            out += [f"{pad}**{match['title']}:**", "", f"{pad}```{language}", *(pad + b for b in body),
                    f"{pad}```", ""]
        i = end
    return "\n".join(out)


def role_to_markdown(role: str, target: str, resolve: Callable[[str], str | None]) -> str:
    if role == "math":
        return f"\\({target}\\)"
    short = target.startswith("~")
    name = target.lstrip("~")
    shown = name.rsplit(".", 1)[-1] if short else name
    if role in ("func", "meth"):
        shown += "()"
    identifier = resolve(name)
    code = f"<code>{html.escape(shown)}</code>"
    if identifier is None:  # a name that cannot be told from the docstring's scope: no link to guess
        return code
    # autorefs turns this into a link when the reference documents the object, and into plain code otherwise
    return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'


def rst_to_markdown(text: str, resolve: Callable[[str], str | None] = lambda name: None) -> str:
    """The docstring ``text`` with its reStructuredText markers rewritten as Markdown (see the module docstring).

    ``resolve`` maps a name as written in a role (``Dropout``, ``droplab.rng``) to the full path of the object it
    names, or ``None`` when it cannot.
    """
    text = rewrite_blocks(text)
    return ROLE.sub(lambda m: role_to_markdown(m[1], m[2], resolve), text)


def resolver(obj) -> Callable[[str], str | None]:
    """Names as Python would see them from ``obj``'s docstring: its members, its module's globals, absolute paths."""
    def resolve(name: str) -> str | None:
        head, _, rest = name.partition(".")
        for scope in (obj, obj.parent):
            if scope is None:
                continue
            try:
                path = scope.resolve(head)
            except Exception:  # griffe raises NameResolutionError (or an alias error) for names it cannot see
                continue
            return f"{path}.{rest}" if rest else path
        return name if "." in name else None

    return resolve


def rewrite_tree(obj) -> None:
    """Rewrite the docstrings of ``obj`` and of everything defined in it (aliases are rewritten where defined)."""
    if obj.docstring is not None:
        obj.docstring.value = rst_to_markdown(obj.docstring.value, resolver(obj))
    for member in obj.members.values():
        if not member.is_alias:
            rewrite_tree(member)


if griffe is not None:

    class RstDocstrings(griffe.Extension):
        """Rewrite every docstring of a loaded package, once its names can be resolved (see the module docstring)."""

        def on_package(self, *, pkg, **kwargs) -> None:
            rewrite_tree(pkg)
