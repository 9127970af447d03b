"""One small registry: decorator, lazy entry points, files named in the config."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from rlvr.verifiers.base import Verifier

ENTRY_POINT_GROUP = "rlvr.verifiers"

_REGISTRY: dict[str, Verifier] = {}
_entry_points_loaded = False


class UnknownVerifierError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def register_verifier(name: str) -> Callable[[Verifier], Verifier]:
    """Register `fn` under `name`; a second verifier with the same name is an error."""

    def deco(fn: Verifier) -> Verifier:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"a verifier named {name!r} is already registered ({_describe(_REGISTRY[name])})")
        _REGISTRY[name] = fn
        return fn

    return deco


def _describe(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        fn = ep.load()
        register_verifier(ep.name)(fn)


def available_verifiers() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def canonical_name(name: str) -> str:
    """The registered name `name` refers to: itself, or the one name equal to it but for case
    (allenai's RLVR datasets say "MATH" for `math`); an UnknownVerifierError otherwise."""
    _load_entry_points()
    if name in _REGISTRY:
        return name
    same = [n for n in _REGISTRY if n.lower() == name.lower()]
    if len(same) == 1:
        return same[0]
    raise UnknownVerifierError(f"unknown verifier {name!r}; available: {', '.join(available_verifiers())}")


def get_verifier(name: str) -> Verifier:
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownVerifierError(
            f"unknown verifier {name!r}; available: {', '.join(available_verifiers())}"
        ) from None


def load_verifier_file(path: str | Path) -> None:
    """Import a local .py file whose `@register_verifier` calls add verifiers."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"verifier file not found: {path}")
    mod_name = f"rlvr_local_verifiers_{abs(hash(str(path)))}"
    if mod_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
