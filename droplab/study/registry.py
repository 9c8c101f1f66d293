"""The claims, found by module: every module of :mod:`droplab.study.claims` that defines ``CLAIM``.

Adding a claim is adding one file there. Claims are named by number (``3``), key
(``weight-scaling``) or both (``03-weight-scaling``).
"""

from __future__ import annotations

import importlib
import pkgutil

from .claim import Claim

__all__ = ["all_claims", "resolve", "by_name"]


def all_claims() -> list[Claim]:
    """Every registered claim, in number order.

    Example::

        >>> [c.number for c in all_claims()][:3]
        [1, 2, 3]
    """
    from . import claims as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if isinstance(getattr(module, "CLAIM", None), Claim):
            found.append(module.CLAIM)
    found.sort(key=lambda claim: claim.number)
    numbers = [claim.number for claim in found]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two claims share a number: {numbers}")
    return found


def by_name(name: str) -> Claim:
    """The claim called ``name`` (``"03-weight-scaling"``; a worker process looks claims up by it)."""
    for claim in all_claims():
        if claim.name == name:
            return claim
    raise KeyError(f"no claim named {name!r}")


def resolve(names: list[str] | tuple[str, ...]) -> list[Claim]:
    """The claims named (all when ``names`` is empty), in number order, each once.

    Raises:
        droplab.lab.errors.UserError: a name that matches no claim (the message lists them).
    """
    from ..lab.errors import UserError

    claims = all_claims()
    if not names:
        return claims
    lookup = {}
    for claim in claims:
        lookup.update({str(claim.number): claim, f"{claim.number:02d}": claim, claim.key: claim, claim.name: claim})
    chosen = {}
    for name in names:
        claim = lookup.get(str(name).strip().lower())
        if claim is None:
            known = ", ".join(claim.name for claim in claims)
            raise UserError(f"unknown claim {name!r}; the claims are: {known}")
        chosen[claim.number] = claim
    return [chosen[number] for number in sorted(chosen)]
