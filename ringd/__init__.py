"""ringd: a distributed supervisor for ordinary processes.

The public API is what this module re-exports; everything else may change.
Kept free of heavy imports: ringctl and the guard import ringd submodules.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import RingdError as RingdError
from .ring import Ring as Ring
from .spec import ChildSpec as ChildSpec
from .spec import parse_child as parse_child
