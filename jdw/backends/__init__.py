"""Backends of depthwise convolution, chosen with ``implementation=``.

``"xla"`` (the reference) is always available; ``"taps"`` is the fused pure-JAX path.
"""

from jdw.backends import taps, xla  # noqa: F401  (registers the backends)
from jdw.backends.registry import Backend, automatic_choice, available, forced_implementation, get, register

__all__ = ["Backend", "automatic_choice", "available", "forced_implementation", "get", "register"]
