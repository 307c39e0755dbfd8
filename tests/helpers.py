"""Shared test helpers: per-dtype tolerances and comparison against the reference."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

from jdw.kernels import cpu_depthwise

GUIDE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "guides" / "backends.md"


def register_guide_backend() -> str:
    """Registers the example backend of the backend guide, run from the guide's own text; returns its name."""
    code = re.search(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S).group(1)
    exec(compile(code, str(GUIDE), "exec"), {"__name__": "guide_backend"})
    return "example"


# Every test of the grid runs on each: jdw's backends and the guide's example backend. "cpu" is there
# wherever its extension was built (test_backends.py checks that it is on Linux x86-64, as in CI).
CPU = ("cpu",) if cpu_depthwise.AVAILABLE else ()
IMPLEMENTATIONS = ("xla", "taps", *CPU, "pallas", register_guide_backend())

# Max abs error allowed, relative to max(1, |reference|), per dtype of the computation.
_TOLERANCE = {"float64": 1e-12, "float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}


def compile_grid(chips, layers, name, keep):
    """The ``(chip, layer, dtype)`` cases of a deviceless compile test: every chip x layer in float32 and
    bfloat16 where ``keep(chip, dtype)``, with ids such as ``v5e-14x14x384-k3-s1-d1-bfloat16``."""
    return [
        pytest.param(chip, layer, dtype, id=f"{chip}-{name(layer)}-{dtype}")
        for chip in chips
        for layer in layers
        for dtype in ("float32", "bfloat16")
        if keep(chip, dtype)
    ]


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


def mamba_conv_program(device, variant: str):
    """A Mamba conv1d layer (8 x 2048 x 1536 bfloat16, kernel 4, SiLU) through the pallas path, placed on
    ``device`` for compiling: ``(conv, args)`` for a whole sequence (``"plain"``), a chunk continuing from a
    state (``"state"``) or packed sequences (``"segments"``)."""
    import jax

    import jdw

    sharding = jax.sharding.SingleDeviceSharding(device)
    shape = lambda *dims, dtype="bfloat16": jax.ShapeDtypeStruct(dims, dtype, sharding=sharding)  # noqa: E731
    x, kernel, bias = shape(8, 2048, 1536), shape(4, 1, 1536), shape(1536)
    extra = {"state": shape(8, 3, 1536), "segments": shape(8, 2048, dtype="int32")}.get(variant)

    def conv(x, kernel, bias, extra=None):
        return jdw.causal_conv1d(
            x,
            kernel,
            bias,
            activation="silu",
            initial_state=extra if variant == "state" else None,
            segment_ids=extra if variant == "segments" else None,
            implementation="pallas",
        )

    return conv, (x, kernel, bias) if extra is None else (x, kernel, bias, extra)


def training_program(conv):
    """``jit`` of the gradients of ``sum(conv(x, kernel, bias, ...))`` with respect to x, kernel and bias."""
    import jax
    import jax.numpy as jnp

    return jax.jit(jax.grad(lambda *a: jnp.sum(conv(*a).astype(jnp.float32)), argnums=(0, 1, 2)))
