"""Pallas GPU (Triton) kernel for the causal depthwise conv1d of sequence models.

One kernel for :func:`jdw.causal_conv1d`'s forward on GPU: it reads the chunk ``x``, the
previous chunk's ``state`` and the packed sequences' segment positions where they are stored,
and applies the bias and the activation before it writes ``y``. Nothing is concatenated or
padded in HBM first, so the forward moves ``x`` and ``y`` once (plus the small state).

Each program computes ``rows`` positions times ``channels`` channels of one sequence (a
power-of-two tile in registers); tap ``i`` of position ``t`` reads position
``t - pad + i * dilation`` of the chunk, or of the state where that is negative, and is
dropped where it lies before the position's segment (``reach``, as in
:func:`jdw.functional.causal.causal_conv1d`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jdw.kernels.pallas_depthwise import (
    EPILOGUES,
    GPU_TILE_ELEMENTS,
    GPU_WARPS,
    _next_power_of_two,
    accumulator_dtype,
)


def tile(length: int, channels: int) -> tuple[int, int]:
    """``(rows, channels)`` of one program's tile: powers of two, ``GPU_TILE_ELEMENTS`` elements at most.

    Examples:
      >>> from jdw.kernels.pallas_causal import tile
      >>> tile(2048, 1536), tile(500, 256), tile(3, 5)
      ((8, 128), (8, 128), (4, 8))
    """
    cb = min(128, _next_power_of_two(channels))
    return max(1, min(GPU_TILE_ELEMENTS // cb, _next_power_of_two(length))), cb


def _kernel(*refs, length, pad, width, dilation, channels, rows, cb, epilogue, acc_dtype, has_state, has_reach):
    # x: (B, L, C), w: (W, C), b: (C,), [state: (B, pad, C)], [reach: (B, L)], out: (B, L, C);
    # grid (L tiles, C blocks, B)
    from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415  (GPU-only module)

    refs = list(refs)
    x_ref, w_ref, b_ref = refs[:3]
    s_ref = refs[3] if has_state else None
    r_ref = refs[3 + has_state] if has_reach else None
    o_ref = refs[-1]
    block_t, block_c, seq = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    t = block_t * rows + jnp.arange(rows, dtype=jnp.int32)
    c = block_c * cb + jnp.arange(cb, dtype=jnp.int32)
    known, inside = c < channels, t < length
    loaded = jnp.minimum(c, channels - 1)[None, :]  # loads stay in the array; masks drop what is not there
    exists = inside[:, None] & known[None, :]

    def load(ref, index, mask):
        return pltriton.load(ref.at[index], mask=mask, other=0).astype(acc_dtype)

    if has_reach:
        reach = pltriton.load(r_ref.at[seq, jnp.minimum(t, length - 1)], mask=inside, other=0)
    acc = jnp.zeros((rows, cb), acc_dtype)
    for i in range(width):
        lag = pad - i * dilation
        source = t - lag
        past = (source < 0)[:, None]
        x = load(x_ref, (seq, jnp.clip(source, 0, length - 1)[:, None], loaded), exists & ~past)
        if has_state and lag > 0:
            x += load(s_ref, (seq, jnp.clip(source + pad, 0, pad - 1)[:, None], loaded), exists & past)
        if has_reach and lag > 0:
            x = jnp.where((reach >= lag)[:, None], x, 0)
        acc += x * load(w_ref, (i, loaded[0]), known)[None, :]
    acc += load(b_ref, (loaded[0],), known)[None, :]
    y = EPILOGUES[epilogue](acc).astype(o_ref.dtype)
    pltriton.store(o_ref.at[seq, t[:, None], c[None, :]], y, mask=exists)


def forward(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    state: jax.Array | None,
    reach: jax.Array | None,
    *,
    dilation: int,
    activation: str = "identity",
    out_dtype: Any = None,
    interpret: bool = False,
) -> jax.Array:
    """``activation(causal_conv(x, kernel) + bias)`` of ``x`` ``(B, L, C)``, continuing from ``state``.

    Args:
      x: the chunk, ``(B, L, C)``.
      kernel: ``(W, C)`` (depth multiplier 1).
      bias: ``(C,)`` or ``None``.
      state: ``(B, (W - 1) * dilation, C)``, the tokens before the chunk, or ``None`` (zeros).
      reach: ``(B, L)`` int32, how many earlier tokens each position may read, or ``None`` (all).
      dilation: spacing of the taps.
      activation: a name in :data:`jdw.kernels.pallas_depthwise.EPILOGUES`.
      out_dtype: the result's dtype (``x``'s by default).
      interpret: run in Pallas's interpreter (any platform) instead of compiling for a GPU.

    Returns:
      ``(B, L, C)``.
    """
    batch, length, channels = x.shape
    width = kernel.shape[0]
    pad = (width - 1) * dilation
    rows, cb = tile(length, channels)
    bias = jnp.zeros((channels,), x.dtype) if bias is None else bias
    operands = [x, kernel, bias] + ([state] if state is not None else []) + ([reach] if reach is not None else [])
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    nbytes = sum(a.size * a.dtype.itemsize for a in operands) + x.size * out_dtype.itemsize
    compiler_params = None
    if not interpret:
        from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415

        compiler_params = pltriton.CompilerParams(num_warps=GPU_WARPS, num_stages=1)
    return pl.pallas_call(
        functools.partial(
            _kernel,
            length=length,
            pad=pad,
            width=width,
            dilation=dilation,
            channels=channels,
            rows=rows,
            cb=cb,
            epilogue=activation,
            acc_dtype=accumulator_dtype(x.dtype),
            has_state=state is not None,
            has_reach=reach is not None,
        ),
        out_shape=jax.ShapeDtypeStruct(x.shape, out_dtype),
        grid=(pl.cdiv(length, rows), pl.cdiv(channels, cb), batch),
        compiler_params=compiler_params,
        cost_estimate=pl.CostEstimate(
            flops=2 * x.size * width, transcendentals=0 if activation == "identity" else x.size, bytes_accessed=nbytes
        ),
        interpret=interpret,
        name="jdw_causal_conv1d_forward",
    )(*operands)
