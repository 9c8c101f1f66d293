"""User code as lab parts: ``FILE.py:FACTORY`` or ``package.module:FACTORY`` for models and datasets.

A factory is any callable. The lab calls it with the keyword arguments it *declares* among what it
has to offer: for a model, ``input_shape`` (one example's shape), ``n_outputs`` (classes, or
regression outputs) and every :class:`~droplab.lab.config.ExperimentConfig` field (``width``,
``depth``, ``dropout``, ``seed``, ...); for a dataset, the config fields. A factory with ``**kwargs``
receives everything. A file path is resolved against the current directory, so no ``PYTHONPATH`` is
needed; the file is imported once per process under a private module name, with its own directory on
``sys.path`` as ``python FILE.py`` would put it, so it can import the modules beside it.

Example::

    >>> def make(n_outputs, width=8):
    ...     return n_outputs, width
    >>> call_factory(make, "make", {"n_outputs": 3, "depth": 2})
    (3, 8)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import UserCodeError, UserError

__all__ = ["BUILTIN_MODELS", "is_factory_spec", "register", "resolve", "call_factory", "declared", "code_files",
           "importable_beside"]

#: the built-in models, as factories of the same kind a user writes
BUILTIN_MODELS = {name: f"droplab.lab.models:{name}" for name in ("mlp", "cnn1d", "gru", "transformer")}

_LOADED: dict[str, Any] = {}  # resolved file path -> module (a file is executed once per process)
_REGISTERED: dict[str, Callable] = {}  # spec -> a callable handed over in-process (the Python API, a notebook)


def register(obj: Callable) -> str:
    """A spec naming ``obj`` for this process (the Python API's callables, lambdas and notebook functions).

    The spec reads ``module:qualname`` where that names it, so stored configs stay readable.
    """
    name = getattr(obj, "__qualname__", type(obj).__name__)
    spec = f"{getattr(obj, '__module__', None) or 'python'}:{name}"
    if not name.isidentifier() or _REGISTERED.get(spec, obj) is not obj:
        spec = f"{spec}#{id(obj):x}"
    _REGISTERED[spec] = obj
    return spec


def is_factory_spec(text: object) -> bool:
    """Whether ``text`` names a factory (``FILE.py:NAME`` or ``package.module:NAME``) rather than a built-in."""
    return isinstance(text, str) and ":" in text and not text.startswith(("http:", "https:"))


def _split(spec: str, what: str) -> tuple[str, str]:
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise UserError(f"{what} {spec!r} must look like FILE.py:FACTORY or package.module:FACTORY")
    return where, name


def _load_file(path: Path, what: str):
    key = str(path.resolve())
    if key in _LOADED:
        return _LOADED[key]
    if not path.is_file():
        raise UserError(f"{what} file not found: {path} (paths are relative to the current directory "
                        f"{Path.cwd()})")
    module_name = "droplab_user_" + hashlib.sha1(key.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{what} file {path} cannot be imported as Python (give a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    importable_beside(path)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(module_name, None)
        raise UserCodeError(f"importing {path}", error, (str(path.resolve()), str(path))) from error
    _LOADED[key] = module
    return module


def importable_beside(path: str | Path) -> None:
    """Make the modules beside ``path`` importable, as ``python path`` would (its directory first on sys.path).

    So a model file can ``from my_layers import Block`` with no ``PYTHONPATH``, also in a factory that
    imports lazily. The directory stays on the path for the rest of the process, as it would for a script.
    """
    directory = str(Path(path).expanduser().resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)


def resolve(spec: str, what: str = "model") -> Callable:
    """The callable ``spec`` names: a built-in model name, ``FILE.py:NAME`` or ``package.module:NAME``.

    Raises :class:`~droplab.lab.errors.UserError` naming the file, module or attribute that is missing.
    """
    if spec in _REGISTERED:
        return _REGISTERED[spec]
    if what == "model" and spec in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[spec]
    where, name = _split(str(spec), what)
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _load_file(Path(where).expanduser(), what)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as error:
            raise UserError(f"{what} module {where!r} not found ({error}); for a file give FILE.py:{name}") from None
    factory = getattr(module, name, None)
    if factory is None:
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise UserError(f"{what} {spec!r}: {where} has no {name!r}; callables there: {', '.join(public) or 'none'}")
    if not callable(factory):
        raise UserError(f"{what} {spec!r}: {name} is a {type(factory).__name__}, not a callable factory")
    return factory


def declared(factory: Callable) -> tuple[set[str], bool, list[str]]:
    """``(keyword names it accepts, whether it takes **kwargs, names it requires)``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set(), True, []
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    varkw = any(p.kind is p.VAR_KEYWORD for p in params)
    required = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, varkw, required


def code_files(factory: Callable) -> tuple[str, ...]:
    """The source file of ``factory`` (the frames a user error shows)."""
    try:
        return (inspect.getsourcefile(factory) or "",)
    except TypeError:
        return ()


def call_factory(factory: Callable, spec: str, available: Mapping[str, Any]) -> Any:
    """Call ``factory`` with the arguments it declares among ``available``.

    A required argument the lab cannot supply is a :class:`UserError`; an exception raised inside a
    user's factory is a :class:`UserCodeError` that shows only the user's frames.
    """
    names, varkw, required = declared(factory)
    missing = [name for name in required if name not in available]
    if missing:
        raise UserError(f"factory {spec!r} requires {', '.join(missing)}, which the lab does not provide; it can "
                        f"declare any of: {', '.join(sorted(available))}")
    kwargs = dict(available) if varkw else {k: v for k, v in available.items() if k in names}
    if (getattr(factory, "__module__", None) or "").startswith("droplab."):
        return factory(**kwargs)  # droplab's own factories: their errors are droplab's (user errors stay so)
    try:
        return factory(**kwargs)
    except (UserError, UserCodeError):
        raise
    except Exception as error:
        raise UserCodeError(f"{spec}()", error, code_files(factory)) from error
