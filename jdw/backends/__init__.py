"""Backends of depthwise convolution, chosen with ``implementation=``.

``"xla"`` (the reference) is always available; ``"taps"`` is the fused pure-JAX path;
``"pallas"`` is the hand-written kernel (:mod:`jdw.backends.pallas`).
"""

from jdw.backends import pallas, taps, xla  # noqa: F401  (registers the backends)
from jdw.backends.registry import Backend, automatic_choice, available, forced_implementation, get, register

__all__ = ["pallas", "Backend", "automatic_choice", "available", "forced_implementation", "get", "register"]
