"""Pallas kernels for 2-D depthwise convolution: forward (with a fused bias + activation) and kernel gradient.

Depthwise convolution does ``2 k²`` FLOPs per output element and is bound by memory
traffic, so the kernels are organised around reading each input tile once:

* **Phases instead of strides.** A stride-``s`` convolution reads input row
  ``s * h + i * d`` for output row ``h`` and tap ``i``. Splitting the padded input into
  its ``s x s`` phases (``x[a::s, b::s]``, one layout change that XLA fuses with the
  zero padding) turns every tap into a *unit-stride* window of one phase at a static
  offset ``(i * d) // s``, so the kernel body is a sum of static slices with no strided
  loads, on every backend.
* **Tiles.** The grid runs over ``(batch, channel blocks, output-row blocks)``. A row
  block of ``rows`` outputs reads ``rows + halo`` phase rows, an overlapping window
  expressed with a :class:`pl.Element` block dimension (element offsets, not block
  indices), so each input tile is copied to on-chip memory once and every tap reads it
  from there. Channels sit on the 128 lanes (TPU) and the full padded width on the
  sublanes; :class:`BlockSizes` says how many rows and channels a step takes and is
  checked against the on-chip memory the step needs.
* **Epilogue.** Bias and an activation (``relu``, ``relu6``, ``hard_swish``,
  ``hard_sigmoid``, ``silu``) are applied to the float32 accumulator before the single
  store, so the layer MobileNets run next costs no extra pass.
* **Kernel gradient.** ``dk[t, c] = Σ_{n,h,w} x_phase[n, h + oi, w + oj, c] · dy[n, h, w, c]``
  accumulates in a float32 output block that stays resident while the grid's batch and
  row axes (marked ``"arbitrary"``) sweep over it.

The input gradient is a transposed convolution, which the backend computes with the
same forward kernel on the stride-dilated cotangent and the flipped kernel (see
:mod:`jdw.backends.pallas`). Ragged edges are handled by padding: the output's rows are
padded up to a multiple of ``rows`` and its channels to a multiple of ``channels``, and
the padding is sliced off; zero cotangents in that padding add nothing to gradients.

Every kernel takes ``interpret``: ``False`` compiles it (Mosaic on TPU), ``True`` or a
:class:`jax.experimental.pallas.tpu.InterpretParams` runs it in Pallas's interpreter, which
is how the CPU test suite checks them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

# Activations the forward kernel applies to its float32 accumulator before the store.
EPILOGUES = {
    "identity": lambda z: z,
    "relu": lambda z: jnp.maximum(z, 0.0),
    "relu6": lambda z: jnp.clip(z, 0.0, 6.0),
    "hard_sigmoid": lambda z: jnp.clip(z + 3.0, 0.0, 6.0) / 6.0,
    "hard_swish": lambda z: z * jnp.clip(z + 3.0, 0.0, 6.0) / 6.0,
    "silu": lambda z: z / (1.0 + jnp.exp(-z)),
    "swish": lambda z: z / (1.0 + jnp.exp(-z)),
}

_LANES = 128
# A TPU v5e TensorCore has 128 MiB of VMEM but Mosaic's default scoped limit is 16 MiB (v5e)
# to 32 MiB (v6e); blocks are sized to stay well inside the smaller one, double buffering included.
DEFAULT_VMEM_BUDGET = 12 * 2**20
# On GPU (Triton) a step's tiles live in registers: at most this many float32 accumulator
# elements per program (64 per thread with 4 warps) before the compiler spills.
MAX_GPU_TILE_ELEMENTS = 8192
TARGETS = ("tpu", "triton")


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """How much of the output one grid step computes.

    Attributes:
      rows: output rows per step (the output is padded up to a multiple of it).
      channels: channels per step (the channels are padded up to a multiple of it).
        On TPU a multiple of 128 (the lane count) unless it covers all of the layer's channels.
        On GPU (Triton) both must be powers of two.

    Examples:
      >>> from jdw.kernels.pallas_depthwise import BlockSizes
      >>> BlockSizes(rows=8, channels=128)
      BlockSizes(rows=8, channels=128)
    """

    rows: int = 8
    channels: int = _LANES

    def __post_init__(self):
        for name in ("rows", "channels"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BlockSizes.{name} must be a positive int, got {name}={value!r}")

    @classmethod
    def default(cls, layer: Layer, target: str = "tpu") -> BlockSizes:
        """Sensible blocks for ``layer`` on ``target`` ("tpu" or "triton").

        TPU: all channels in one block when they are fewer than 128 or not a multiple of it
        (so no lanes are padded in HBM), else 128; and the most rows (up to 64) whose step fits
        :data:`DEFAULT_VMEM_BUDGET`. GPU: up to 32 channels and the most rows whose
        accumulator fits :data:`MAX_GPU_TILE_ELEMENTS`, all powers of two.
        """
        _check_target(target)
        if target == "tpu":
            # All channels in one block when they are not a multiple of 128 (a block equal to the
            # full dimension is allowed, and padding 144 channels to 256 would move 1.8x the bytes),
            # as long as that still leaves a reasonable row block; otherwise 128 lanes at a time.
            candidates = [layer.channels] if layer.channels <= _LANES or layer.channels % _LANES else []
            for channels in [*candidates, _LANES]:
                rows = next(
                    (r for r in (64, 32, 16, 8, 4, 2, 1) if vmem_bytes(layer, cls(r, channels)) <= DEFAULT_VMEM_BUDGET),
                    0,
                )
                if rows >= min(8, layer.output_rows) or channels == _LANES:
                    return cls(rows=max(1, min(rows, layer.output_rows)), channels=channels)
        channels = min(32, _next_power_of_two(layer.channels))
        cols = _next_power_of_two(layer.output_cols)
        rows = max(1, MAX_GPU_TILE_ELEMENTS // (cols * channels))
        rows = min(1 << (rows.bit_length() - 1), _next_power_of_two(layer.output_rows))
        return cls(rows=rows, channels=channels)

    def check(self, layer: Layer, target: str = "tpu") -> None:
        """Raises ``ValueError`` if these blocks cannot serve ``layer`` on ``target`` or overflow its memory."""
        _check_target(target)
        if target == "tpu":
            if self.channels % _LANES and self.channels < layer.channels:
                raise ValueError(
                    f"BlockSizes.channels={self.channels} must be a multiple of {_LANES} (TPU lanes) or cover "
                    f"all {layer.channels} channels"
                )
            need = vmem_bytes(layer, self)
            if need > DEFAULT_VMEM_BUDGET:
                raise ValueError(
                    f"BlockSizes(rows={self.rows}, channels={self.channels}) needs {need / 2**20:.1f} MiB of VMEM "
                    f"per step for {layer}, more than the {DEFAULT_VMEM_BUDGET / 2**20:.0f} MiB budget; use fewer rows"
                )
            return
        if not (_is_power_of_two(self.rows) and _is_power_of_two(self.channels)):
            raise ValueError(
                f"on GPU (Triton) BlockSizes must be powers of two, got rows={self.rows}, channels={self.channels}"
            )
        elements = self.rows * _next_power_of_two(layer.output_cols) * self.channels
        if elements > MAX_GPU_TILE_ELEMENTS:
            raise ValueError(
                f"BlockSizes(rows={self.rows}, channels={self.channels}) gives a {elements}-element tile for {layer}, "
                f"more than {MAX_GPU_TILE_ELEMENTS} per GPU program; use fewer rows or channels"
            )


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


@dataclasses.dataclass(frozen=True)
class Layer:
    """Static description of a 2-D depthwise convolution on channels-last input, padding included.

    ``channels`` counts the kernel's channels (input channels times the multiplier: the
    backend repeats input channels first). ``padding`` is explicit ``(low, high)`` zero padding.
    """

    input_size: tuple[int, int]
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]
    channels: int
    itemsize: int = 4

    def __post_init__(self):
        if self.output_rows < 1 or self.output_cols < 1:
            raise ValueError(f"{self} has an empty output")

    def _out(self, axis: int) -> int:
        k = (self.kernel_size[axis] - 1) * self.dilation[axis] + 1
        return (self.input_size[axis] + sum(self.padding[axis]) - k) // self.strides[axis] + 1

    @property
    def output_rows(self) -> int:
        return self._out(0)

    @property
    def output_cols(self) -> int:
        return self._out(1)

    @property
    def phases(self) -> int:
        return self.strides[0] * self.strides[1]

    def tap_offsets(self) -> tuple[tuple[int, int, int], ...]:
        """(phase, row offset, column offset) of every tap, in row-major tap order."""
        (sh, sw), (dh, dw) = self.strides, self.dilation
        return tuple(
            ((i * dh % sh) * sw + (j * dw % sw), i * dh // sh, j * dw // sw)
            for i in range(self.kernel_size[0])
            for j in range(self.kernel_size[1])
        )

    @property
    def halo(self) -> tuple[int, int]:
        """Extra phase rows and columns a block of outputs reads beyond its own size."""
        offsets = self.tap_offsets()
        return max(o[1] for o in offsets), max(o[2] for o in offsets)

    def __str__(self) -> str:
        return (
            f"a {self.input_size[0]}x{self.input_size[1]}x{self.channels} depthwise layer "
            f"(kernel {self.kernel_size}, strides {self.strides}, dilation {self.dilation})"
        )


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def vmem_bytes(layer: Layer, blocks: BlockSizes) -> int:
    """On-chip bytes one forward step needs: double-buffered input and output tiles plus the accumulator.

    Counts TPU tile padding: the last dimension is rounded up to 128 lanes and the
    second-to-last (the width) to the sublane tile (8 rows of 32 bits, 16 of 16 bits).
    """
    halo_rows, halo_cols = layer.halo
    lanes = _round_up(min(blocks.channels, layer.channels), _LANES)
    sublanes = 8 * max(1, 4 // layer.itemsize)
    in_cols = _round_up(layer.output_cols + halo_cols, sublanes)
    out_cols = _round_up(layer.output_cols, sublanes)
    tile_in = layer.phases * (blocks.rows + halo_rows) * in_cols * lanes * layer.itemsize
    tile_out = blocks.rows * out_cols * lanes * layer.itemsize
    accumulator = blocks.rows * _round_up(layer.output_cols, 8) * lanes * 4
    return 2 * tile_in + 2 * tile_out + 2 * accumulator


def phase_split(x: jax.Array, layer: Layer, out_rows: int, out_cols: int, channels: int) -> jax.Array:
    """``(N, H, W, C)`` -> ``(N, sh * sw, Hq, Wq, channels)``: zero-padded, split into stride phases.

    ``out_rows x out_cols`` outputs (padded up to the blocks) are served; phase rows and
    columns past what the taps read are cropped, missing ones zero-filled. One ``lax.pad``
    (negative amounts crop) and, for strides above 1, one transpose, which XLA fuses.
    """
    (sh, sw), ((pt, _), (pw, _)) = layer.strides, layer.padding
    halo_rows, halo_cols = layer.halo
    hq, wq = out_rows + halo_rows, out_cols + halo_cols
    n, h, w, c = x.shape
    config = [(0, 0, 0), (pt, hq * sh - h - pt, 0), (pw, wq * sw - w - pw, 0), (0, channels - c, 0)]
    x = lax.pad(x, jnp.zeros((), x.dtype), config)
    if sh == sw == 1:
        return x[:, None]
    x = x.reshape(n, hq, sh, wq, sw, channels).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(n, sh * sw, hq, wq, channels)


def accumulator_dtype(dtype: Any) -> np.dtype:
    """float32 for 16- and 32-bit floats; float64 stays float64 (interpreter and GPU only)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _forward_kernel(x_ref, w_ref, b_ref, o_ref, *, taps, rows, cols, epilogue, acc_dtype):
    # x_ref: (1, phases, rows + halo, Wq, Cb)  w_ref: (taps, Cb)  b_ref: (1, Cb)  o_ref: (rows, cols, Cb)
    acc = None
    for t, (phase, di, dj) in enumerate(taps):
        window = x_ref[0, phase, pl.ds(di, rows), pl.ds(dj, cols), :].astype(acc_dtype)
        term = window * w_ref[pl.ds(t, 1), :].astype(acc_dtype)[None]
        acc = term if acc is None else acc + term
    acc = acc + b_ref[...].astype(acc_dtype)[None]
    o_ref[...] = EPILOGUES[epilogue](acc).astype(o_ref.dtype)


def _kernel_grad_kernel(x_ref, dy_ref, o_ref, *, taps, rows, cols, acc_dtype):
    # x_ref: (1, phases, rows + halo, Wq, Cb)  dy_ref: (rows, cols, Cb)  o_ref: (taps padded, Cb), this step's share
    dy = dy_ref[...].astype(acc_dtype)
    if o_ref.shape[0] > len(taps):
        o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)
    for t, (phase, di, dj) in enumerate(taps):
        window = x_ref[0, phase, pl.ds(di, rows), pl.ds(dj, cols), :].astype(acc_dtype)
        o_ref[pl.ds(t, 1), :] = jnp.sum(jnp.sum(window * dy, axis=0), axis=0, keepdims=True)


def _halo_block(phases: int, rows: int, cols: int, channels: int, offsets) -> pl.BlockSpec:
    """An overlapping window of the phase-split input: ``offsets(*grid)`` gives (image, first row, first channel).

    Every dimension is a :class:`pl.Element` dimension (Pallas requires all or none), so
    the index map returns element offsets, not block indices.
    """

    def index_map(*grid):
        image, row, channel = offsets(*grid)
        return image, 0, row, 0, channel

    return pl.BlockSpec(tuple(pl.Element(size) for size in (1, phases, rows, cols, channels)), index_map)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Padded sizes and grid of one call, from the layer, the blocks and the target."""

    layer: Layer
    blocks: BlockSizes
    target: str
    batch: int

    @property
    def channel_block(self) -> int:
        return min(self.blocks.channels, self.layer.channels) if self.target == "tpu" else self.blocks.channels

    @property
    def channels(self) -> int:
        return _round_up(self.layer.channels, self.channel_block)

    @property
    def row_blocks(self) -> int:
        return -(-self.layer.output_rows // self.blocks.rows)

    @property
    def out_rows(self) -> int:
        return self.row_blocks * self.blocks.rows

    @property
    def out_cols(self) -> int:
        cols = self.layer.output_cols
        return cols if self.target == "tpu" else _next_power_of_two(cols)

    @property
    def taps(self) -> tuple[tuple[int, int, int], ...]:
        return self.layer.tap_offsets()

    @property
    def tap_rows(self) -> int:
        """Rows of the per-step kernel-gradient block: the taps, a power of two on GPU."""
        return len(self.taps) if self.target == "tpu" else _next_power_of_two(len(self.taps))

    def split(self, x: jax.Array) -> jax.Array:
        return phase_split(x, self.layer, self.out_rows, self.out_cols, self.channels)

    def input_block(self, xs: jax.Array) -> pl.BlockSpec:
        _, phases, _, wq, _ = xs.shape
        rows, cb = self.blocks.rows, self.channel_block
        offsets = lambda i, j, r: (i, r * rows, j * cb)  # noqa: E731
        return _halo_block(phases, rows + self.layer.halo[0], wq, cb, offsets)

    def compiler_params(self, interpret: Any) -> Any:
        if interpret:
            return None
        if self.target == "tpu":
            return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))
        from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415  (GPU-only module)

        return pltriton.CompilerParams(num_warps=4, num_stages=2)


def _plan(x: jax.Array, layer: Layer, block_sizes: BlockSizes | None, target: str) -> _Plan:
    _check_target(target)
    if x.ndim != 4 or x.shape[-1] != layer.channels:
        raise ValueError(f"expected x of shape (N, H, W, {layer.channels}) for {layer}, got {x.shape}")
    blocks = block_sizes or BlockSizes.default(layer, target)
    blocks.check(layer, target)
    return _Plan(layer, blocks, target, x.shape[0])


def _out_struct(shape: tuple[int, ...], dtype: Any, *, like: jax.Array) -> jax.ShapeDtypeStruct:
    """The output type, varying over the same manual mesh axes as ``like`` (inside ``shard_map``)."""
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=getattr(jax.typeof(like), "mat", None))


def _cost(layer: Layer, batch: int, nbytes: int) -> pl.CostEstimate:
    outputs = batch * layer.output_rows * layer.output_cols * layer.channels
    taps = layer.kernel_size[0] * layer.kernel_size[1]
    return pl.CostEstimate(flops=2 * taps * outputs, transcendentals=0, bytes_accessed=nbytes)


def forward(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    layer: Layer,
    *,
    activation: str = "identity",
    out_dtype: Any = None,
    block_sizes: BlockSizes | None = None,
    target: str = "tpu",
    interpret: Any = False,
) -> jax.Array:
    """Depthwise convolution of ``x`` ``(N, H, W, C)`` with ``kernel`` ``(kh, kw, C)``, plus bias and activation.

    Args:
      x: channels-last input whose channel count equals the kernel's (multipliers are
        expanded by the caller).
      kernel: ``(kh, kw, C)``.
      bias: ``(C,)`` or ``None``.
      layer: the geometry (strides, padding, dilation) with ``layer.channels == C``.
      activation: a name from :data:`EPILOGUES`, applied in float32 before the store.
      out_dtype: dtype of the result; ``x.dtype`` by default. Accumulation is float32.
      block_sizes: tile sizes; :meth:`BlockSizes.default` for ``layer`` when ``None``.
      target: ``"tpu"`` (Mosaic) or ``"triton"`` (GPU): the block constraints to follow
        and the compiler to use when not interpreting.
      interpret: ``False`` to compile, ``True`` or ``pltpu.InterpretParams()`` to run in
        Pallas's interpreter (on any platform).

    Returns:
      ``(N, Ho, Wo, C)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jdw.kernels import pallas_depthwise as pd
      >>> layer = pd.Layer((8, 8), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), channels=4)
      >>> y = pd.forward(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4)), None, layer, interpret=True)
      >>> y.shape, float(y[0, 4, 4, 0]), float(y[0, 0, 0, 0])
      ((1, 8, 8, 4), 9.0, 4.0)
    """
    if activation not in EPILOGUES:
        raise ValueError(f"activation {activation!r} has no fused epilogue; fused ones: {sorted(EPILOGUES)}")
    plan = _plan(x, layer, block_sizes, target)
    n, c = x.shape[0], layer.channels
    out_dtype = np.dtype(out_dtype or x.dtype)
    xs = plan.split(x)
    taps, rows, cb = plan.taps, plan.blocks.rows, plan.channel_block
    w = jnp.pad(kernel.reshape(len(taps), c), ((0, 0), (0, plan.channels - c)))
    b = jnp.zeros((1, plan.channels), x.dtype) if bias is None else bias.reshape(1, c)
    b = jnp.pad(b, ((0, 0), (0, plan.channels - c)))
    acc = accumulator_dtype(x.dtype)
    body = functools.partial(
        _forward_kernel, taps=taps, rows=rows, cols=plan.out_cols, epilogue=activation, acc_dtype=acc
    )
    out_shape = (n, plan.out_rows, plan.out_cols, plan.channels)
    y = pl.pallas_call(
        body,
        out_shape=_out_struct(out_shape, out_dtype, like=xs),
        grid=(n, plan.channels // cb, plan.row_blocks),
        in_specs=[
            plan.input_block(xs),
            pl.BlockSpec((len(taps), cb), lambda i, j, r: (0, j)),
            pl.BlockSpec((1, cb), lambda i, j, r: (0, j)),
        ],
        out_specs=pl.BlockSpec((None, rows, plan.out_cols, cb), lambda i, j, r: (i, r, 0, j)),
        compiler_params=plan.compiler_params(interpret),
        cost_estimate=_cost(layer, n, xs.size * xs.dtype.itemsize + math.prod(out_shape) * out_dtype.itemsize),
        interpret=interpret,
        name="jdw_depthwise_forward",
    )(xs, w, b)
    return y[:, : layer.output_rows, : layer.output_cols, :c]


def kernel_grad(
    x: jax.Array,
    dy: jax.Array,
    layer: Layer,
    *,
    block_sizes: BlockSizes | None = None,
    target: str = "tpu",
    interpret: Any = False,
    per_image: bool = False,
) -> jax.Array:
    """The kernel gradient ``d<dy, forward(x, k)>/dk``: ``(N, H, W, C)``, ``(N, Ho, Wo, C)`` -> ``(kh, kw, C)``.

    Accumulates and returns float32 (float64 for float64 inputs).

    Every grid step writes its own partial sums (no step waits on another, so the grid is
    parallel on TPU cores and GPU blocks alike); one small XLA reduction adds them up.
    With ``per_image=True`` the result keeps the batch axis, ``(N, kh, kw, C)``, so that a
    batch-sharded caller can leave the sum over images (and devices) to XLA.
    """
    plan = _plan(x, layer, block_sizes, target)
    n, c = x.shape[0], layer.channels
    xs = plan.split(x)
    taps, rows, cb = plan.taps, plan.blocks.rows, plan.channel_block
    pads = (
        (0, 0),
        (0, plan.out_rows - layer.output_rows),
        (0, plan.out_cols - layer.output_cols),
        (0, plan.channels - c),
    )
    dy = jnp.pad(dy, pads)
    acc = accumulator_dtype(x.dtype)
    body = functools.partial(_kernel_grad_kernel, taps=taps, rows=rows, cols=plan.out_cols, acc_dtype=acc)
    partials = pl.pallas_call(
        body,
        out_shape=_out_struct((n, plan.row_blocks, plan.tap_rows, plan.channels), acc, like=xs),
        grid=(n, plan.channels // cb, plan.row_blocks),
        in_specs=[plan.input_block(xs), pl.BlockSpec((None, rows, plan.out_cols, cb), lambda i, j, r: (i, r, 0, j))],
        out_specs=pl.BlockSpec((None, None, plan.tap_rows, cb), lambda i, j, r: (i, r, 0, j)),
        compiler_params=plan.compiler_params(interpret),
        cost_estimate=_cost(layer, n, xs.size * xs.dtype.itemsize + dy.size * dy.dtype.itemsize),
        interpret=interpret,
        name="jdw_depthwise_kernel_grad",
    )(xs, dy)
    if per_image:
        return jnp.sum(partials, axis=1)[:, : len(taps), :c].reshape(n, *layer.kernel_size, c)
    return jnp.sum(partials, axis=(0, 1))[: len(taps), :c].reshape(*layer.kernel_size, c)


def reference(x: jax.Array, kernel: jax.Array, layer: Layer) -> jax.Array:
    """The same convolution with XLA's grouped convolution, for tests: ``(N, H, W, C)``, ``(kh, kw, C)``."""
    c = x.shape[-1]
    return lax.conv_general_dilated(
        x,
        kernel.reshape(*layer.kernel_size, 1, c),
        window_strides=layer.strides,
        padding=layer.padding,
        rhs_dilation=layer.dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
        precision=lax.Precision.HIGHEST,
    )


__all__ = [
    "EPILOGUES",
    "TARGETS",
    "BlockSizes",
    "Layer",
    "accumulator_dtype",
    "forward",
    "kernel_grad",
    "phase_split",
    "reference",
    "vmem_bytes",
]
