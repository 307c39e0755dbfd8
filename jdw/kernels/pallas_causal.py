"""Pallas kernels (Triton GPU, Mosaic TPU) for the causal depthwise conv1d of sequence models.

One kernel per compiler for :func:`jdw.causal_conv1d`'s forward on a chunk that continues a
state: it reads the chunk ``x`` and the previous chunk's ``state`` where they are stored and
applies the bias and the activation before it writes ``y``. Nothing is concatenated or padded
in HBM first, so the forward moves ``x`` and ``y`` once (plus the small state).

**GPU (Triton), :func:`forward`.** Each program computes ``rows`` positions times ``channels``
channels of one sequence (a power-of-two tile in registers); tap ``i`` of position ``t`` reads
position ``t - pad + i * dilation`` of the chunk, or of the state where that is negative, and is
dropped where it lies before the position's segment (``reach``, as in
:func:`jdw.functional.causal.causal_conv1d`): packed sequences are read in place too.

**TPU (Mosaic), :func:`tpu_forward`.** The grid is ``(sequences, 128-lane channel blocks,
position blocks)``, the last swept in order. Each step widens its block of the chunk to
float32 behind the ``pad`` positions before it in a VMEM window: the state's at the first
block, the previous block's last rows after that (kept in the window, so no position is read
twice from HBM). Each tap is then a static, sublane-shifted slice of the window. Packed
sequences (``reach``) take the composed path on TPU (not built here: their ``(B, L)`` positions
lie on the lanes as XLA stores them, and the kernel would need them on the sublanes).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jdw.kernels.pallas_depthwise import (
    _LANES,
    EPILOGUES,
    GPU_TILE_ELEMENTS,
    GPU_WARPS,
    VMEM_LIMIT,
    _next_power_of_two,
    _round_up,
    accumulator_dtype,
)

# Positions per TPU step: a 1024 x 128 float32 window is 512 KiB of VMEM; larger blocks only add
# VMEM (the grid's per-step cost is already small against a 1024-position block).
TPU_BLOCK_POSITIONS = 1024


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


# --- TPU (Mosaic) ------------------------------------------------------------------------------


def tpu_blocks(length: int, channels: int, pad: int) -> tuple[int, int, int]:
    """``(positions, channels, front)`` of one TPU step: positions a multiple of the 8-row sublane tile
    (or the whole chunk), channels 128 lanes (or all of them when that is not a multiple of 128), and
    ``front``, the window's rows before the block: ``pad`` rounded up to the sublane tile.

    Examples:
      >>> from jdw.kernels.pallas_causal import tpu_blocks
      >>> tpu_blocks(2048, 1536, 3), tpu_blocks(500, 256, 30), tpu_blocks(5, 96, 3)
      ((1024, 128, 8), (500, 128, 32), (5, 96, 8))
    """
    front = _round_up(max(pad, 1), 8)
    # Every block but the last hands its last `front` rows on through the window: it has at least as many.
    rows = length if length <= TPU_BLOCK_POSITIONS else max(TPU_BLOCK_POSITIONS, front)
    cb = _LANES if channels % _LANES == 0 else channels
    return rows, cb, front


def _tpu_kernel(x_ref, w_ref, b_ref, s_ref, o_ref, window, *, pad, width, dilation, rows, front, epilogue, acc_dtype):
    # x: (1, rows, cb) block of (B, L, C); w: (W, cb); b: (1, cb); state: (1, pad, cb); out like x.
    # window: (front + rows, cb) float32 -- rows [front - pad, front) hold the `pad` positions before the
    # block, rows [front, front + rows) the block itself.
    block = pl.program_id(2)

    @pl.when(block == 0)
    def _():
        window[pl.ds(front - pad, pad), :] = s_ref[0].astype(acc_dtype)

    @pl.when(block > 0)
    def _():  # the previous block's last rows, left at the window's end by the previous step
        window[pl.ds(0, front), :] = window[pl.ds(rows, front), :]

    window[pl.ds(front, rows), :] = x_ref[0].astype(acc_dtype)
    w = w_ref[...].astype(acc_dtype)
    acc = None
    for i in range(width):
        term = window[pl.ds(front - pad + i * dilation, rows), :] * w[i : i + 1, :]
        acc = term if acc is None else acc + term
    acc = acc + b_ref[...].astype(acc_dtype)
    o_ref[0] = EPILOGUES[epilogue](acc).astype(o_ref.dtype)


def tpu_forward(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    state: jax.Array,
    *,
    dilation: int,
    activation: str = "identity",
    out_dtype: Any = None,
    interpret: Any = False,
) -> jax.Array:
    """``activation(causal_conv(x, kernel) + bias)`` of ``x`` ``(B, L, C)`` continuing from ``state``, on TPU.

    Args:
      x: the chunk, ``(B, L, C)``.
      kernel: ``(W, C)`` (depth multiplier 1), ``W >= 2``.
      bias: ``(C,)`` or ``None``.
      state: ``(B, (W - 1) * dilation, C)``, the tokens before the chunk.
      dilation: spacing of the taps.
      activation: a name in :data:`jdw.kernels.pallas_depthwise.EPILOGUES`.
      out_dtype: the result's dtype (``x``'s by default).
      interpret: ``False`` to compile with Mosaic, ``True`` or ``pltpu.InterpretParams()`` to run in
        Pallas's interpreter.

    Returns:
      ``(B, L, C)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jdw.kernels import pallas_causal
      >>> x, state = jnp.ones((1, 4, 2)), jnp.full((1, 2, 2), 10.0)
      >>> pallas_causal.tpu_forward(x, jnp.ones((3, 2)), None, state, dilation=1, interpret=True)[0, :, 0]
      Array([21., 12.,  3.,  3.], dtype=float32)
    """
    batch, length, channels = x.shape
    width = kernel.shape[0]
    pad = (width - 1) * dilation
    if pad < 1 or state.shape != (batch, pad, channels):
        raise ValueError(
            f"tpu_forward needs a kernel of width >= 2 and a state of shape {(batch, pad, channels)}; "
            f"got width {width} and state {state.shape}"
        )
    rows, cb, front = tpu_blocks(length, channels, pad)
    acc = accumulator_dtype(x.dtype)
    bias = jnp.zeros((1, channels), x.dtype) if bias is None else bias.reshape(1, channels)
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    nbytes = sum(a.size * a.dtype.itemsize for a in (x, kernel, bias, state)) + x.size * out_dtype.itemsize
    params = None
    if not interpret:
        params = pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary"), vmem_limit_bytes=VMEM_LIMIT
        )
    block = lambda b, c, t: (b, t, c)  # noqa: E731
    return pl.pallas_call(
        functools.partial(
            _tpu_kernel,
            pad=pad,
            width=width,
            dilation=dilation,
            rows=rows,
            front=front,
            epilogue=activation,
            acc_dtype=acc,
        ),
        out_shape=jax.ShapeDtypeStruct(x.shape, out_dtype),
        grid=(batch, pl.cdiv(channels, cb), pl.cdiv(length, rows)),
        in_specs=[
            pl.BlockSpec((1, rows, cb), block),
            pl.BlockSpec((width, cb), lambda b, c, t: (0, c)),
            pl.BlockSpec((1, cb), lambda b, c, t: (0, c)),
            pl.BlockSpec((1, pad, cb), lambda b, c, t: (b, 0, c)),
        ],
        out_specs=pl.BlockSpec((1, rows, cb), block),
        scratch_shapes=[pltpu.VMEM((front + rows, cb), acc)],
        compiler_params=params,
        cost_estimate=pl.CostEstimate(
            flops=2 * x.size * width, transcendentals=0 if activation == "identity" else x.size, bytes_accessed=nbytes
        ),
        interpret=interpret,
        name="jdw_causal_conv1d_tpu_forward",
    )(x, kernel, bias, state)
