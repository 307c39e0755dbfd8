"""Shims for the oldest jax releases jdw supports (the floors in ``pyproject.toml``, tested by ``.ci/run``).

Each shim asks jax what it accepts, never its version number, and keeps the newest jax's call as it is.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
from jax import lax

# Newer jax takes ``out_sharding`` in ``lax.conv_general_dilated`` (for meshes with explicit axes); 0.7 has none.
_CONV_TAKES_OUT_SHARDING = "out_sharding" in inspect.signature(lax.conv_general_dilated).parameters
# The manual mesh axes an array varies over inside ``shard_map``: ``vma`` in jax 0.7, ``manual_axis_type`` in newer.
_STRUCT_PARAMETERS = inspect.signature(jax.ShapeDtypeStruct.__init__).parameters


def conv_general_dilated(*args: Any, out_sharding: Any = None, **kwargs: Any) -> jax.Array:
    """``lax.conv_general_dilated``; ``out_sharding`` is passed on where jax takes it."""
    if _CONV_TAKES_OUT_SHARDING:
        kwargs["out_sharding"] = out_sharding
    return lax.conv_general_dilated(*args, **kwargs)


def shape_dtype_struct_like(shape: tuple[int, ...], dtype: Any, like: jax.Array) -> jax.ShapeDtypeStruct:
    """A ``ShapeDtypeStruct`` varying over the same manual mesh axes as ``like`` (inside ``shard_map``)."""
    aval = jax.typeof(like)
    if "manual_axis_type" in _STRUCT_PARAMETERS:
        return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=getattr(aval, "mat", None))
    if "vma" in _STRUCT_PARAMETERS:
        return jax.ShapeDtypeStruct(shape, dtype, vma=getattr(aval, "vma", None))
    return jax.ShapeDtypeStruct(shape, dtype)
