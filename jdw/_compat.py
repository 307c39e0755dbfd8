"""Shims for the oldest releases jdw supports (the floors in ``pyproject.toml``, tested by ``.ci/run``).

Each shim asks the library what it has, never its version number, and keeps the newest release's call as it is.
"""

from __future__ import annotations

from flax import nnx

# Flax's Variable-free copy of a tree (train states, checkpoints): ``nnx.pure`` in flax 0.12.4 (the floor),
# ``nnx.as_pure`` in newer releases.
as_pure = getattr(nnx, "as_pure", None) or nnx.pure
