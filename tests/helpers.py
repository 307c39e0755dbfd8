"""Shared test helpers: per-dtype tolerances and comparison against the reference."""

from __future__ import annotations

import numpy as np

IMPLEMENTATIONS = ("xla", "taps", "pallas")

# Max abs error allowed, relative to max(1, |reference|), per dtype of the computation.
_TOLERANCE = {"float64": 1e-12, "float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}


def tolerance(dtype) -> float:
    return _TOLERANCE[np.dtype(dtype).name]


def assert_close(actual, expected, dtype=np.float32):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = float(np.abs(actual - expected).max(initial=0.0))
    assert err <= tolerance(dtype) * scale, f"max abs error {err:.3g} > {tolerance(dtype) * scale:.3g}"


def linen_variables(nnx_module):
    """The Linen variable dict holding an NNX module's parameters and batch statistics."""
    from flax import nnx

    variables = {"params": nnx.state(nnx_module, nnx.Param).to_pure_dict()}
    stats = nnx.state(nnx_module, nnx.BatchStat).to_pure_dict()
    if stats:
        variables["batch_stats"] = stats
    return variables
