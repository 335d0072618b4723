"""ringd: a distributed supervisor for ordinary processes.

The public API is what this module re-exports; everything else may change.
Kept free of heavy imports: ringctl and the guard import ringd submodules.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import RingdError as RingdError
    from .ring import Ring as Ring
    from .spec import ChildSpec as ChildSpec
    from .spec import parse_child as parse_child

_EXPORTS = {
    "RingdError": "errors",
    "Ring": "ring",
    "ChildSpec": "spec",
    "parse_child": "spec",
}


def __getattr__(name: str) -> Any:
    """The public names, imported on first use: the guard process (``python -m
    ringd.guard``) imports this package and must stay small (no xxhash, no msgspec)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
