"""Backends of depthwise convolution, chosen with ``implementation=``.

``"xla"`` (the reference) is always available; ``"taps"`` is the fused pure-JAX path;
``"cpu"`` is jdw's C++ loops for XLA:CPU (:mod:`jdw.backends.cpu`), registered where the
package's extension was built; ``"pallas"`` is the hand-written kernel for GPU and TPU
(:mod:`jdw.backends.pallas`), imported with ``jax.experimental.pallas`` the first time it is used.
"""

import importlib

from jdw.backends import taps, xla  # noqa: F401  (registers the backends)
from jdw.kernels import cpu_depthwise

if cpu_depthwise.AVAILABLE:
    from jdw.backends import cpu  # noqa: F401  (registers the backend)
from jdw.backends.registry import Backend, automatic_choice, available, forced_implementation, get, register


def __getattr__(name: str):
    if name == "pallas":  # jdw.backends.pallas, imported (and registered) on first use
        return importlib.import_module("jdw.backends.pallas")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["pallas", "Backend", "automatic_choice", "available", "forced_implementation", "get", "register"]
