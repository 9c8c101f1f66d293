"""MkDocs hook: the API reference's pages, generated from ``docs/api/reference.yml``.

For each package of the reference: an overview page (``api/<package>/``: the package's docstring and every
member's one-line summary, by group) and one page per group (``api/<package>/<group>/``) with each member's
entry, rendered by mkdocstrings in the order of the data. The nav's ``API reference: api/index.md`` entry becomes
the index page followed by those pages. Each entry's heading gets a ``[source]`` link to a page of the module's
source with numbered lines (``api/source/droplab/.../<module>/``, kept out of the search index).

Nothing here names a public object: the pages follow the data, and ``tests/test_docs.py`` checks the data
against every public ``__all__``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "api" / "reference.yml"
SOURCE_PAGES = "api/source"


@dataclass
class Member:
    package: str
    name: str  # as written in the data: a name of the package, or a dotted path below it
    alias_of: str | None = None  # "name: droplab.path": documented on another page

    @property
    def path(self) -> str:
        return f"{self.package}.{self.name}"


@dataclass
class Group:
    title: str
    page: str
    about: str
    members: list[Member]
    uri: str = ""  # set by Package


@dataclass
class Package:
    name: str
    about: str
    groups: list[Group] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return "droplab" if self.name == "droplab" else self.name.removeprefix("droplab.")

    @property
    def uri(self) -> str:
        return f"api/{self.slug}/index.md"


def load_reference(path: Path = REFERENCE) -> list[Package]:
    """The reference's packages, groups and members, as ``docs/api/reference.yml`` lists them."""
    packages = []
    for entry in yaml.safe_load(path.read_text(encoding="utf-8")):
        unknown = set(entry) - {"package", "about", "groups"}
        if unknown:
            raise ValueError(f"{path.name}: package {entry.get('package')!r} has unknown keys {sorted(unknown)}")
        package = Package(entry["package"], entry["about"])
        for group in entry["groups"]:
            unknown = set(group) - {"title", "page", "about", "members"}
            if unknown:
                raise ValueError(f"{path.name}: group {group.get('title')!r} has unknown keys {sorted(unknown)}")
            members = [Member(package.name, *next(iter(m.items()))) if isinstance(m, dict) else Member(package.name, m)
                       for m in group["members"]]
            package.groups.append(Group(group["title"], group["page"], group["about"], members))
        single = len(package.groups) == 1
        for group in package.groups:
            group.uri = package.uri if single else f"api/{package.slug}/{group.page}.md"
        packages.append(package)
    return packages


def documented_names(packages: list[Package]) -> dict[str, str]:
    """``{full name: page uri}`` for every name the reference documents (a package is documented by its page)."""
    names = {package.name: package.uri for package in packages}
    for package in packages:
        for group in package.groups:
            for member in group.members:
                names.setdefault(member.path, group.uri)
    return names


def undocumented(packages: list[Package], public: tuple[str, ...] = ()) -> list[str]:
    """One message per public name (in a package's ``__all__``) that the reference has no entry for."""
    names, problems = documented_names(packages), []
    by_name = {package.name: package for package in packages}
    for missing in sorted(set(public) - set(by_name)):
        problems.append(f"{missing} is a public package but docs/api/reference.yml has no entry for it: add one "
                        f"(package, about, groups)")
    for package in packages:
        for name in getattr(importlib.import_module(package.name), "__all__", []):
            if f"{package.name}.{name}" in names:
                continue
            pages = "; ".join(f"{g.title!r} ({g.uri})" for g in package.groups)
            problems.append(f"{package.name}.{name} is public ({package.name}.__all__) but the API reference has no "
                            f"entry for it: add {name!r} to the members of one of {package.name}'s groups in "
                            f"docs/api/reference.yml: {pages}")
    return problems


def stale(packages: list[Package]) -> list[str]:
    """One message per member of the reference that droplab does not have (renamed or removed)."""
    problems = []
    for package in packages:
        for member in (m for group in package.groups for m in group.members):
            for path in filter(None, (member.path, member.alias_of)):
                try:
                    is_module_path(path) or runtime_object(path)
                except (ImportError, AttributeError) as error:
                    problems.append(f"docs/api/reference.yml lists {path}, which cannot be imported ({error}): "
                                    f"renamed or removed? Update the entry in {package.name}'s groups")
    return problems


# ---- objects and their source -------------------------------------------------------------------------------------

def is_module_path(path: str) -> bool:
    try:
        return importlib.util.find_spec(path) is not None
    except (ImportError, ValueError):
        return False


def module_docstring(path: str) -> str:
    """A module's docstring, read without importing it (an integration module imports its library)."""
    spec = importlib.util.find_spec(path)
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""


def runtime_object(path: str):
    module, _, name = path.rpartition(".")
    owner = importlib.import_module(module) if is_module_path(module) else runtime_object(module)
    return getattr(owner, name)


def definition(path: str) -> tuple[str, int]:
    """``(module name, line)`` where the object at ``path`` is defined (a constant: the line assigning it)."""
    if is_module_path(path):
        return path, 1
    obj = runtime_object(path)
    try:
        line = inspect.getsourcelines(inspect.unwrap(obj))[1]
        return obj.__module__, max(line, 1)
    except (TypeError, OSError, AttributeError):
        pass
    # a constant: where the package imports it from, then the line that assigns it
    module, _, name = path.rpartition(".")
    source_module = module
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(alias.name == name for alias in node.names):
            source_module = importlib.util.resolve_name("." * node.level + (node.module or ""), module)
    text = Path(importlib.util.find_spec(source_module).origin).read_text(encoding="utf-8").splitlines()
    assign = re.compile(rf"^{re.escape(name)}\b\s*(:[^=]*)?=")
    line = next((i + 1 for i, row in enumerate(text) if assign.match(row)), 1)
    return source_module, line


def summary(path: str) -> str:
    """The first paragraph of an object's docstring, on one line."""
    if is_module_path(path):
        doc = module_docstring(path)
    else:
        obj = runtime_object(path)
        doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else ""
    return " ".join((doc or "").split("\n\n")[0].split())


def source_root() -> Path:
    """The directory holding the ``droplab`` package being documented (the checkout, or site-packages)."""
    return Path(importlib.util.find_spec("droplab").origin).resolve().parents[1]


def source_file(module: str) -> str:
    """A module's file, relative to :func:`source_root` (``droplab/nn/__init__.py``)."""
    return Path(importlib.util.find_spec(module).origin).resolve().relative_to(source_root()).as_posix()


def source_uri(module: str) -> str:
    return f"{SOURCE_PAGES}/{source_file(module).removesuffix('.py')}.md"


def lazily_public(member: Member) -> bool:
    """Whether the package serves the name only through a module ``__getattr__``, so only its definition is seen."""
    if "." in member.name or is_module_path(member.path):
        return False
    package = importlib.import_module(member.package)
    return member.name not in vars(package)


# ---- pages ---------------------------------------------------------------------------------------------------------

def rst_summary(text: str) -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from docstring_rst import rst_to_markdown
    finally:
        sys.path.remove(str(Path(__file__).parent))
    return rst_to_markdown(text)


def link(target_uri: str, from_uri: str) -> str:
    return posixpath.relpath(target_uri, posixpath.dirname(from_uri))


def defined_path(member: Member) -> str:
    obj = runtime_object(member.path)
    return f"{obj.__module__}.{obj.__qualname__}"


def heading_id(member: Member) -> str:
    """The id mkdocstrings gives the entry's heading: the path the page renders it from."""
    return defined_path(member) if lazily_public(member) else member.path


def entry(member: Member, packages_by_name: dict[str, Package], page_uri: str) -> list[str]:
    """The Markdown of one member's entry on its group page."""
    if member.path in packages_by_name:  # a subpackage: its own pages document it
        target = packages_by_name[member.path]
        return [f"## `{member.path}` {{#{member.path}-entry}}", "",
                f"[`{member.path}`]({link(target.uri, page_uri)}): {target.about}.", ""]
    if member.alias_of:
        return [f"## `{member.path}` {{#{member.path}}}", "",
                f"The same object as [`{member.alias_of}`][{member.alias_of}], re-exported here: "
                f"{rst_summary(summary(member.alias_of))}", ""]
    if lazily_public(member):  # rendered where it is defined, under its public name
        return [f"[](){{#{member.path}}}", "", f"::: {defined_path(member)}", "    options:",
                f'      heading: "{member.path}"', ""]
    return [f"::: {member.path}", ""]


def package_heading(package: Package) -> str:
    """The title of a package's page, and the anchor (``#droplab.nn``) that references to the package reach."""
    return f"# `{package.name}`\n\n[](){{#{package.name}}}"


def package_docstring(package: Package) -> list[str]:
    """The package's own docstring, without a heading of its own (the page's title is the package)."""
    return [f"::: {package.name}", "    options:", "      show_root_heading: false", "      show_root_toc_entry: false",
            "      members: false", ""]


def group_page(package: Package, group: Group, packages_by_name: dict[str, Package]) -> str:
    lines = [f"# {group.title}" if len(package.groups) > 1 else package_heading(package), ""]
    if len(package.groups) == 1:
        lines += package_docstring(package)
    lines += [group.about, ""]
    for member in group.members:
        lines += entry(member, packages_by_name, group.uri)
    return "\n".join(lines)


def overview_page(package: Package, packages_by_name: dict[str, Package]) -> str:
    lines = [package_heading(package), "", *package_docstring(package)]
    for group in package.groups:
        lines += [f"## [{group.title}]({link(group.uri, package.uri)})", "", group.about, ""]
        for member in group.members:
            anchor = f"{member.path}-entry" if member.path in packages_by_name else member.path
            lines.append(f"- [`{member.name}`]({link(group.uri, package.uri)}#{anchor}): "
                         f"{rst_summary(summary(member.alias_of or member.path))}")
        lines.append("")
    return "\n".join(lines)


def index_page(packages: list[Package]) -> str:
    lines = ["# API reference", "",
             "Every public name of droplab, one page per group of objects, most important first. Each entry is "
             "generated from the docstring (math, arguments, shapes, a runnable example) and links to its source.",
             "", "| package | what it holds |", "|---|---|"]
    for package in packages:
        lines.append(f"| [`{package.name}`]({link(package.uri, 'api/index.md')}) | {package.about} |")
    return "\n".join(lines) + "\n"


def source_page(relative: str) -> str:
    """The page of one source file (``relative`` to :func:`source_root`), every line numbered and linkable."""
    text = (source_root() / relative).read_text(encoding="utf-8")
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return "\n".join(["---", "search:", "  exclude: true", "---", "", f"# `{relative}`", "",
                      f'{fence}python linenums="1"', text.rstrip("\n"), fence, ""])


@dataclass
class Site:
    """Every generated page (``{uri: markdown}``), the nav section, and ``{heading id: (source uri, line)}``."""
    pages: dict[str, str]
    nav: list
    sources: dict[str, tuple[str, int]]


def build(packages: list[Package] | None = None) -> Site:
    packages = load_reference() if packages is None else packages
    by_name = {package.name: package for package in packages}
    pages, sources, nav = {"api/index.md": index_page(packages)}, {}, ["api/index.md"]
    for package in packages:
        if len(package.groups) == 1:
            pages[package.uri] = group_page(package, package.groups[0], by_name)
            nav.append({package.name: package.uri})
        else:
            pages[package.uri] = overview_page(package, by_name)
            for group in package.groups:
                pages[group.uri] = group_page(package, group, by_name)
            nav.append({package.name: [package.uri, *({g.title: g.uri} for g in package.groups)]})
        for group in package.groups:
            for member in group.members:
                if member.alias_of or member.path in by_name:
                    continue
                module, line = definition(member.path)
                sources[heading_id(member)] = (source_uri(module), line)
    for uri in {uri for uri, _ in sources.values()}:
        pages[uri] = source_page(uri.removeprefix(SOURCE_PAGES + "/").removesuffix(".md") + ".py")
    return Site(pages, nav, sources)


# ---- the MkDocs hook -------------------------------------------------------------------------------------------------

_site: Site | None = None
HEADING = '<h{level} id="{id}" class="doc doc-heading">'


def on_config(config):
    global _site
    packages = load_reference()
    problems = stale(packages) + undocumented(packages)
    if problems:  # the pages cannot be assembled from data that names what does not exist, nor left incomplete
        raise PluginError("\n".join(problems))
    _site = build(packages)
    for i, item in enumerate(config.nav or []):
        if isinstance(item, dict) and next(iter(item.values())) == "api/index.md":
            config.nav[i] = {next(iter(item)): _site.nav}
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, content in _site.pages.items():
        files.append(File.generated(config, uri, content=content))
    return files


def source_link(html: str, page_url: str) -> str:
    """``[source]`` after each entry's heading on an API page."""
    from mkdocs.utils import get_relative_url

    for path, (uri, line) in _site.sources.items():
        anchor = re.search(rf'<h([1-6]) id="{re.escape(path)}"[^>]*>', html)
        if not anchor:
            continue
        end = html.index(f"</h{anchor[1]}>", anchor.end())
        target = get_relative_url(uri.removesuffix(".md") + "/", page_url) + f"#__codelineno-0-{line}"
        file = uri.removeprefix(SOURCE_PAGES + "/").removesuffix(".md") + ".py"
        label = f'<a class="doc-source-link" href="{target}" title="{file}, line {line}">[source]</a>'
        html = html[:end] + label + html[end:]
    return html


def on_page_content(html, page, config, files):
    uri = page.file.src_uri
    if uri.startswith("api/") and not uri.startswith(SOURCE_PAGES):
        return source_link(html, page.url)
    return html
