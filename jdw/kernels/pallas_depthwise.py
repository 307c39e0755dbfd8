"""Pallas kernels for 2-D depthwise convolution: forward (with a fused bias + activation) and kernel gradient.

Depthwise convolution does ``2 k²`` FLOPs per output element and is bound by memory
traffic, so the kernels are organised around reading each input element from HBM once
and writing each output element once. There are two designs, one per compiler:

**TPU (Mosaic): halo windows by DMA, no HBM pass besides the kernel's own.** The input
stays in HBM exactly as XLA stores it (``memory_space=pl.ANY``: no pad, no phase split, no
relayout). The grid is ``(images, channel blocks, row blocks)``; every step starts the DMA
of the *next* row block's input window (its rows plus the halo, clipped to the image)
into the other half of a double buffer, waits for its own, and widens it into a float32
VMEM window whose border columns and out-of-image rows are zero (the convolution's zero
padding, made in VMEM). Each tap is a static, possibly strided (stride 2), slice of the
window. The output block is stored straight into the result (the edge block is clipped by
Pallas), so the program moves the input once and the output once. The kernel gradient
reuses the same windows and accumulates every tap's ``Σ_{h,w} x · dy`` in a float32 block
that stays resident while the row axis sweeps.

XLA stores a TPU activation so as to pad its ``(8, 128)`` tiles least, not always
channels-last, and the kernels read and write it the way it is stored (:func:`tpu_layout`),
so that the transposes around them are bitcasts: channels on the lanes in 128-lane tiles
(144 channels are a 128-lane and a 16-lane tile) with the width on the sublanes
(``"nhwc"``) or, spatial-major, a sublane tile of images on the sublanes (``"hwnc"``: every
tap an address offset); or the width on the lanes and the channels on the sublanes
(``"nhcw"``), where a stride along the width is taken by the MXU, which selects the strided
columns and transposes each output row to channels-last in one 0/1 matrix product
(``"nhcw>nhwc"``).

**GPU (Triton): masked gathers from the input as stored.** Each program computes a
``rows x cols x channels`` tile of the output (powers of two, Triton's rule for every
array) and, for every tap, loads the input elements that tap multiplies straight from the
unpadded channels-last input: the addresses are computed from the output positions, the
strides, the dilation and the padding, and the mask zeroes the padding and any position
past the layer's bounds, so nothing is padded, split or cropped in HBM and the tile sizes
need not divide the layer. The taps of a tile overlap, so all but the first read of each
element hit the L1/L2 caches: the program moves the input once and the output once. A
dilated input (``Layer.input_dilation``, the transposed convolution that computes the
input gradient) is read the same way, the dilation's holes masked, so no dilated
cotangent is materialised either. Offsets are 64-bit when an array passes 4 GiB (Pallas
chooses), so no batch is too large.

Both apply bias and an activation (``relu``, ``relu6``, ``hard_swish``, ``hard_sigmoid``,
``silu``) to the float32 accumulator before the single store, so the layer MobileNets run
next costs no extra pass. The input gradient is a transposed convolution, which the
backend computes with the same forward kernel on the stride-dilated cotangent and the
flipped kernel (see :mod:`jdw.backends.pallas`); the TPU kernels have XLA dilate it first.

:class:`BlockSizes` says how many output rows and channels a step takes; on TPU it is
checked against a model of every kernel's VMEM (:func:`vmem_bytes`), and the kernels ask
Mosaic for :data:`VMEM_LIMIT` explicitly.

Every kernel takes ``interpret``: ``False`` compiles it (Mosaic on TPU, Triton on GPU),
``True`` or a :class:`jax.experimental.pallas.tpu.InterpretParams` runs it in Pallas's
interpreter, which is how the CPU test suite checks them.
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

from jdw.geometry import Geometry

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
# TPU v5e and v6e TensorCores have 128 MiB of VMEM, v7x 64 MiB; Mosaic's default scoped limit is
# 16 to 32 MiB. The kernels ask for VMEM_LIMIT explicitly and size their blocks to
# DEFAULT_VMEM_BUDGET, leaving the rest for the values Mosaic materialises itself.
DEFAULT_VMEM_BUDGET = 24 * 2**20
VMEM_LIMIT = 40 * 2**20
# Output positions per step and 128-lane tile on TPU: larger tiles only add to the float32
# accumulator Mosaic keeps in VMEM, not to the bytes moved (the halo is already small at this size).
MAX_TPU_TILE_POSITIONS = 2048
# On GPU (Triton) a program's tile lives in registers: GPU_TILE_ELEMENTS float32 accumulator elements
# (8 per thread with GPU_WARPS warps) by default, MAX_GPU_TILE_ELEMENTS at most. ptxas's register
# counts for these sizes are in docs/guides/pallas.md (no spills, 3 or more programs per SM).
GPU_TILE_ELEMENTS = 1024
MAX_GPU_TILE_ELEMENTS = 2048
GPU_WARPS = 4
# Channels per GPU tile: 32 float32 channels are one 128-byte line of the channels-last input.
GPU_CHANNELS = 32
TARGETS = ("tpu", "triton")


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """How much of the output one grid step computes.

    Attributes:
      rows: output rows per step (the last step's block may be ragged).
      channels: channels per step. On TPU a multiple of 128 (the lane count) unless it
        covers all of the layer's channels.
      cols: output columns per step, GPU only (TPU steps take whole rows); ``None`` for
        the default. On GPU (Triton) rows, cols and channels must be powers of two; the
        arrays are not padded to them, the kernels mask the loads and stores instead.

    Examples:
      >>> from jdw.kernels.pallas_depthwise import BlockSizes
      >>> BlockSizes(rows=8, channels=128)
      BlockSizes(rows=8, channels=128, cols=None)
    """

    rows: int = 8
    channels: int = _LANES
    cols: int | None = None

    def __post_init__(self):
        for name in ("rows", "channels", "cols"):
            value = getattr(self, name)
            if name == "cols" and value is None:
                continue
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BlockSizes.{name} must be a positive int, got {name}={value!r}")

    @classmethod
    def default(cls, layer: Layer, target: str = "tpu", batch: int = 1) -> BlockSizes:
        """Sensible blocks for ``layer`` on ``target`` ("tpu" or "triton").

        TPU: all channels in one block (when they are a multiple of 128 and that leaves at
        least 8 rows, else 128 lanes at a time); the most rows, up to all of them, whose
        tiles stay within :data:`MAX_TPU_TILE_POSITIONS` and whose step fits
        :data:`DEFAULT_VMEM_BUDGET`. GPU: up to :data:`GPU_CHANNELS` channels, 8 columns
        (or the whole tile along a one-row layer) and the rows that fill
        :data:`GPU_TILE_ELEMENTS`, all powers of two.
        """
        _check_target(target)
        if target == "tpu":
            layer = _tpu_layer(layer)
            out_rows = layer.output_rows
            by_tile = max(1, MAX_TPU_TILE_POSITIONS // layer.output_cols)
            wanted = [r for r in (out_rows, 64, 32, 16, 8, 4, 2, 1) if r <= min(out_rows, by_tile)]
            wanted = sorted(set(wanted), reverse=True)
            candidates = [layer.channels] + ([_LANES] if layer.channels % _LANES == 0 else [])
            for channels in candidates:
                fits = lambda r, c=channels: vmem_bytes(layer, cls(r, c), batch) <= DEFAULT_VMEM_BUDGET  # noqa: E731
                rows = next((r for r in wanted if fits(r)), 0)
                if rows >= min(8, out_rows) or channels == candidates[-1]:
                    return cls(rows=max(rows, 1), channels=channels)
        channels = min(GPU_CHANNELS, _next_power_of_two(layer.channels))
        cols = _gpu_cols(layer, channels)
        rows = min(max(1, GPU_TILE_ELEMENTS // (cols * channels)), _next_power_of_two(layer.output_rows))
        return cls(rows=rows, channels=channels, cols=cols)

    def check(self, layer: Layer, target: str = "tpu", *, memory: bool = True, batch: int = 1) -> None:
        """Raises ``ValueError`` if these blocks cannot serve ``layer`` on ``target``.

        With ``memory`` (compiled kernels) also if a step overflows the target's on-chip memory;
        ``batch`` decides the TPU kernels' layout (:func:`tpu_layout`).
        """
        _check_target(target)
        if target == "tpu":
            layer = _tpu_layer(layer)
            if self.channels < layer.channels and (self.channels % _LANES or layer.channels % self.channels):
                raise ValueError(
                    f"BlockSizes.channels={self.channels} must cover all {layer.channels} channels or be a "
                    f"multiple of {_LANES} (TPU lanes) that divides them"
                )
            need = vmem_bytes(layer, self, batch)
            if memory and need > DEFAULT_VMEM_BUDGET:
                fix = "use fewer rows" if self.rows > 1 else "split the input along its width, or use another backend"
                if self.rows == 1 and self.channels > _LANES and layer.channels % _LANES == 0:
                    fix = f"use channels={_LANES}"
                raise ValueError(
                    f"BlockSizes(rows={self.rows}, channels={self.channels}) needs {need / 2**20:.1f} MiB of VMEM "
                    f"per step for {layer}, more than the {DEFAULT_VMEM_BUDGET / 2**20:.0f} MiB budget; {fix}"
                )
            return
        cols = self.cols or _gpu_cols(layer, self.channels)
        if not all(_is_power_of_two(v) for v in (self.rows, cols, self.channels)):
            raise ValueError(
                f"on GPU (Triton) BlockSizes must be powers of two, got rows={self.rows}, cols={cols}, "
                f"channels={self.channels}"
            )
        elements = self.rows * cols * self.channels
        if memory and elements > MAX_GPU_TILE_ELEMENTS:
            raise ValueError(
                f"BlockSizes(rows={self.rows}, channels={self.channels}, cols={cols}) gives a {elements}-element "
                f"tile for {layer}, more than {MAX_GPU_TILE_ELEMENTS} per GPU program; use fewer rows, columns or "
                "channels"
            )


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


@dataclasses.dataclass(frozen=True)
class Layer:
    """Static description of a 2-D depthwise convolution on channels-last input, padding included.

    ``channels`` counts the kernel's channels (input channels times the multiplier: the
    backend repeats input channels first). ``padding`` is explicit ``(low, high)`` zero
    padding (negative crops). ``input_dilation`` puts ``d - 1`` zeros between input
    elements, like ``lax.conv_general_dilated``'s ``lhs_dilation``: a transposed convolution
    (the input gradient) is a stride-1 convolution of the dilated cotangent. The shape
    arithmetic is :class:`jdw.geometry.Geometry`'s (:attr:`geometry`, :meth:`from_geometry`).
    """

    input_size: tuple[int, int]
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]
    channels: int
    itemsize: int = 4
    input_dilation: tuple[int, int] = (1, 1)

    def __post_init__(self):
        try:
            _ = self.geometry
        except ValueError:
            raise ValueError(f"{self} has an empty output") from None

    @classmethod
    def from_geometry(cls, geometry: Geometry, channels: int, itemsize: int = 4) -> Layer:
        """The layer of a 1-D or 2-D ``geometry`` (1-D runs on one row) with ``channels`` of ``itemsize`` bytes."""
        g = geometry.as_2d()
        return cls(g.input_size, g.kernel_size, g.strides, g.padding, g.dilation, channels, itemsize, g.input_dilation)

    @functools.cached_property
    def geometry(self) -> Geometry:
        """The layer's shape as a :class:`~jdw.geometry.Geometry`."""
        return Geometry(
            self.input_size, self.kernel_size, self.strides, self.padding, self.dilation, self.input_dilation
        )

    @property
    def output_rows(self) -> int:
        return self.geometry.output_size[0]

    @property
    def output_cols(self) -> int:
        return self.geometry.output_size[1]

    def __str__(self) -> str:
        return (
            f"a {self.input_size[0]}x{self.input_size[1]}x{self.channels} depthwise layer "
            f"(kernel {self.kernel_size}, strides {self.strides}, dilation {self.dilation}"
            + (f", input dilation {self.input_dilation})" if self.input_dilation != (1, 1) else ")")
        )


def _tpu_layer(layer: Layer) -> Layer:
    """The layer the TPU kernels run: after :func:`_tpu_input` has dilated the input and made its crops
    in XLA (:meth:`Geometry.split_padding`), leaving them only non-negative zero padding."""
    if layer.input_dilation == (1, 1) and min(min(p) for p in layer.padding) >= 0:
        return layer
    config, padding = layer.geometry.split_padding()
    size = tuple((n - 1) * (inner + 1) + 1 + lo + hi for n, (lo, hi, inner) in zip(layer.input_size, config))
    return dataclasses.replace(layer, input_size=size, padding=padding, input_dilation=(1, 1))


def _tpu_input(x: jax.Array, layer: Layer) -> jax.Array:
    """``x`` dilated and cropped in XLA for :func:`_tpu_layer` (one pass; the TPU kernels read windows by DMA)."""
    if _tpu_layer(layer) is layer:
        return x
    config, _ = layer.geometry.split_padding()
    return lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *config, (0, 0, 0)])


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def vmem_bytes(layer: Layer, blocks: BlockSizes, batch: int = 1) -> int:
    """On-chip bytes the largest TPU kernel step needs (forward or kernel gradient), TPU tile padding included.

    ``batch`` decides the layout (:func:`tpu_layout`): in the spatial-major one a step
    takes a sublane tile of images.

    Counts the double-buffered input window, its float32 copy with the zero border, the
    double-buffered output (or cotangent) tiles and the kernel gradient's resident block,
    the kernel and bias blocks, and the float32 temporaries of one 128-lane tile (accumulator,
    window, product). The last dimension is rounded up to 128 lanes and the second-to-last
    to the sublane tile (8 rows of 32 bits, 16 of 16 bits).
    """
    layer = _tpu_layer(layer)
    geo = _tpu_geometry(layer, blocks, batch)
    sublanes = 8 * max(1, 4 // layer.itemsize)
    lanes = _round_up(geo.channel_block, _LANES)
    item, acc_item = layer.itemsize, max(4, layer.itemsize)
    taps = layer.kernel_size[0] * layer.kernel_size[1]
    if geo.wide:  # (rows, channels, columns): channels on the sublanes, columns on the lanes
        channels = _round_up(geo.channel_block, sublanes)
        window = 2 * geo.rows_in * channels * _round_up(layer.input_size[1], _LANES) * item
        widened = geo.rows_in * _round_up(geo.channel_block, 8) * _round_up(geo.window_cols, _LANES) * acc_item
        out = geo.rows * _round_up(geo.channel_block, 8) * _round_up(layer.output_cols, _LANES)
        tiles = 2 * geo.rows * channels * _round_up(layer.output_cols, _LANES) * item
        weights = 2 * (taps + 1) * _round_up(geo.channel_block, 8) * _LANES * (item + acc_item)
        return window + widened + tiles + weights + 3 * out * acc_item
    if geo.images:  # (rows, columns, images, lanes): columns are a major dimension, images fill the sublanes
        columns, window_columns, out_columns = (layer.input_size[1], geo.window_cols, layer.output_cols)
        columns, window_columns, out_columns = (v * geo.images for v in (columns, window_columns, out_columns))
        acc_columns = out_columns
    else:
        columns = _round_up(layer.input_size[1], sublanes)
        window_columns = _round_up(geo.window_cols, 8)
        out_columns, acc_columns = _round_up(layer.output_cols, sublanes), _round_up(layer.output_cols, 8)
    window = 2 * geo.rows_in * columns * lanes * item
    widened = geo.rows_in * window_columns * lanes * acc_item
    tiles = 2 * geo.rows * out_columns * lanes * item
    gradient = 2 * _round_up(taps, 8) * max(1, geo.images) * lanes * acc_item
    weights = 2 * (_round_up(taps, sublanes) + sublanes) * lanes * item + gradient
    temporaries = 3 * geo.rows * acc_columns * _LANES * acc_item
    return window + widened + tiles + weights + temporaries


def accumulator_dtype(dtype: Any) -> np.dtype:
    """float32 for 16- and 32-bit floats; float64 stays float64 (interpreter and GPU only)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _blocks(x: jax.Array, layer: Layer, block_sizes: BlockSizes | None, target: str, interpret: Any) -> BlockSizes:
    """The checked blocks of one call."""
    _check_target(target)
    if x.ndim != 4 or tuple(x.shape[1:]) != (*layer.input_size, layer.channels):
        raise ValueError(
            f"expected x of shape (N, {layer.input_size[0]}, {layer.input_size[1]}, {layer.channels}) "
            f"for {layer}, got {x.shape}"
        )
    blocks = block_sizes or BlockSizes.default(layer, target, x.shape[0])
    # The interpreter has no on-chip memory to overflow: only the blocks' shape rules apply there.
    blocks.check(layer, target, memory=not interpret, batch=x.shape[0])
    return blocks


def _out_struct(shape: tuple[int, ...], dtype: Any, *, like: jax.Array) -> jax.ShapeDtypeStruct:
    """The output type, varying over the same manual mesh axes as ``like`` (inside ``shard_map``)."""
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=getattr(jax.typeof(like), "mat", None))


def _cost(layer: Layer, batch: int, nbytes: int) -> pl.CostEstimate:
    outputs = batch * layer.output_rows * layer.output_cols * layer.channels
    taps = layer.kernel_size[0] * layer.kernel_size[1]
    return pl.CostEstimate(flops=2 * taps * outputs, transcendentals=0, bytes_accessed=nbytes)


# --- TPU (Mosaic): halo windows by DMA ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TpuGeometry:
    """Where each row block's input window lies, for the TPU kernels (all static).

    ``images`` is 0 for the ``(N, H, W, C)`` layout (one image per step, width on the
    sublanes) and the images per step for the spatial-major ``(H, W, N, C)`` layout (images
    on the sublanes: every tap is an address offset, no sublane shifts). ``wide`` is the
    ``(N, H, C, W)`` layout: channels on the sublanes, the width on the lanes; with
    ``channels_last_out`` its output is ``(N, H, W, C)``, each row's stride-1 accumulation
    ``(C, W)`` turned into ``(Wo, C)`` by one matrix product with a 0/1 selection matrix
    (the MXU is otherwise idle in a depthwise convolution, and there are no strided or
    transposing lane loads).
    """

    layer: Layer
    blocks: BlockSizes
    images: int = 0
    wide: bool = False
    channels_last_out: bool = False  # wide only: the output (and cotangent) in (N, H, W, C), the MXU transposing

    @property
    def full_cols(self) -> int:
        """Columns of the stride-1 (in width) accumulation a strided or transposing wide kernel selects from."""
        return (self.layer.output_cols - 1) * self.layer.strides[1] + 1

    def selection(self) -> jax.Array:
        """``(Wo, full_cols)`` 0/1 matrix picking every stride-th column, for the MXU.

        Computed (iota), not a constant: ``custom_partitioning`` refuses captured constants.
        """
        shape = (self.layer.output_cols, self.full_cols)
        picked = (
            lax.broadcasted_iota(jnp.int32, shape, 1)
            == lax.broadcasted_iota(jnp.int32, shape, 0) * self.layer.strides[1]
        )
        return picked.astype(jnp.float32)

    @property
    def rows(self) -> int:
        return min(self.blocks.rows, self.layer.output_rows)

    @property
    def row_blocks(self) -> int:
        return -(-self.layer.output_rows // self.rows)

    @property
    def channel_block(self) -> int:
        return min(self.blocks.channels, self.layer.channels)

    @property
    def channel_blocks(self) -> int:
        return self.layer.channels // self.channel_block

    @property
    def lane_tiles(self) -> int:
        return -(-self.channel_block // _LANES)

    @property
    def rows_in(self) -> int:
        """Input rows one row block reads: its outputs' rows plus the halo."""
        (kh, _), (sh, _), (dh, _) = self.layer.kernel_size, self.layer.strides, self.layer.dilation
        return (self.rows - 1) * sh + (kh - 1) * dh + 1

    @property
    def lead(self) -> int:
        """Column where the image starts in the widened window: the left padding, rounded up to a sublane
        tile when the columns are on the sublanes."""
        low = self.layer.padding[1][0]
        return low if self.images or self.wide else _round_up(low, 8)

    def source(self, x_hbm, block, first, count, channels):
        """The HBM rows ``[first, first + count)`` of grid block ``block`` (image or image block)."""
        if self.images:
            return x_hbm.at[pl.ds(first, count), :, pl.ds(block * self.images, self.images), channels]
        if self.wide:
            return x_hbm.at[block, pl.ds(first, count), channels, :]
        return x_hbm.at[block, pl.ds(first, count), :, channels]

    @property
    def window_cols(self) -> int:
        (_, kw), (_, sw), (_, dw) = self.layer.kernel_size, self.layer.strides, self.layer.dilation
        read = (self.layer.output_cols - 1) * sw + (kw - 1) * dw + 1  # padded columns the taps read
        return self.lead + max(self.layer.input_size[1], read - self.layer.padding[1][0])

    def row_window(self, block: int) -> tuple[int, int, int]:
        """(first image row, first window row, row count) that row block ``block`` copies from the image."""
        start = block * self.rows * self.layer.strides[0] - self.layer.padding[0][0]
        first, stop = max(0, start), min(self.layer.input_size[0], start + self.rows_in)
        return first, first - start, max(0, stop - first)

    def edge_blocks(self) -> tuple[int, ...]:
        """Row blocks whose window reaches past the image (into the zero padding)."""
        return tuple(b for b in range(self.row_blocks) if self.row_window(b)[1:] != (0, self.rows_in))

    def taps(self):
        """(tap index, first window row, first window column) of every tap."""
        layer, lead = self.layer, self.lead
        (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation
        return [(i * kw + j, i * dh, lead - layer.padding[1][0] + j * dw) for i in range(kh) for j in range(kw)]


def _tpu_fetch(x_hbm, buf, sem, geo: _TpuGeometry, first_step):
    """Brings this step's input rows into ``buf[slot]`` and starts the next step's copy; returns ``slot``.

    ``buf`` is the DMA double buffer ``(2, rows_in, ...)``; rows past the image are not
    copied (the caller zeroes them in its window). ``first_step()`` runs once per sweep of
    the row axis, which must run in order on one core (``"arbitrary"``).
    """
    layer = geo.layer
    n, j, r = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    cb, rows_in, edges = geo.channel_block, geo.rows_in, geo.edge_blocks()
    align = 8 if geo.wide else _LANES
    channels = pl.ds(0, cb) if geo.channel_blocks == 1 else pl.ds(pl.multiple_of(j * cb, align), cb)

    def copies(block, slot):
        """[(condition or None, DMA descriptor)]: one static copy per edge block, one dynamic one for the rest."""
        out = []
        for edge in edges:
            first, dst, count = geo.row_window(edge)
            if count:
                src = geo.source(x_hbm, n, first, count, channels)
                out.append((block == edge, pltpu.make_async_copy(src, buf.at[slot, pl.ds(dst, count)], sem.at[slot])))
        if len(edges) < geo.row_blocks:
            interior = functools.reduce(jnp.logical_and, [block != e for e in edges]) if edges else None
            first = block * geo.rows * layer.strides[0] - layer.padding[0][0]
            src = geo.source(x_hbm, n, first, rows_in, channels)
            out.append((interior, pltpu.make_async_copy(src, buf.at[slot], sem.at[slot])))
        return out

    def each(block, slot, method):
        for condition, copy in copies(block, slot):
            if condition is None:
                getattr(copy, method)()
            else:
                pl.when(condition)(lambda copy=copy: getattr(copy, method)())

    slot = r % 2

    @pl.when(r == 0)
    def _():
        first_step()
        each(r, 0, "start")

    @pl.when(r + 1 < geo.row_blocks)
    def _():
        each(r + 1, 1 - slot, "start")

    each(r, slot, "wait")
    return slot


def _zero_outside_image(window, geo: _TpuGeometry, row_axis: int):
    """Zeroes the window rows that lie outside the image in the edge row blocks (the convolution's padding)."""
    r = pl.program_id(2)
    for edge in geo.edge_blocks():
        _, dst, count = geo.row_window(edge)

        @pl.when(r == edge)
        def _(dst=dst, count=count):
            lead = (slice(None),) * row_axis
            if dst:
                window[(*lead, slice(0, dst))] = jnp.zeros(
                    window.shape[:row_axis] + (dst,) + window.shape[row_axis + 1 :], window.dtype
                )
            if dst + count < geo.rows_in:
                rest = geo.rows_in - dst - count
                window[(*lead, slice(dst + count, geo.rows_in))] = jnp.zeros(
                    window.shape[:row_axis] + (rest,) + window.shape[row_axis + 1 :], window.dtype
                )


def _tpu_window(x_hbm, buf, window, sem, geo: _TpuGeometry, acc_dtype):
    """Fills ``window`` with this step's zero-padded float32 input window; prefetches the next step's.

    Channels on lanes: ``buf`` ``(2, rows_in, W, [images,] cb)``, ``window`` ``(lane tiles, rows_in,
    window_cols, [images,] 128)``. Columns on lanes (``geo.wide``): ``buf`` ``(2, rows_in, cb, W)``,
    ``window`` ``(rows_in, cb, window_cols)``.
    """
    width, rows_in, lead, cols = geo.layer.input_size[1], geo.rows_in, geo.lead, geo.window_cols
    if geo.wide:

        def first_step():  # the border columns are never written by the copies: zero them once per sweep
            cb = geo.channel_block
            if lead:
                window[:, :, :lead] = jnp.zeros((rows_in, cb, lead), acc_dtype)
            if lead + width < cols:
                window[:, :, lead + width :] = jnp.zeros((rows_in, cb, cols - lead - width), acc_dtype)

        slot = _tpu_fetch(x_hbm, buf, sem, geo, first_step)
        window[:, :, pl.ds(lead, width)] = buf[slot].astype(acc_dtype)
        _zero_outside_image(window, geo, row_axis=0)
        return

    tiles, inner = geo.lane_tiles, window.shape[3:]

    def first_step():
        if lead:
            window[:, :, :lead] = jnp.zeros((tiles, rows_in, lead, *inner), acc_dtype)
        if lead + width < cols:
            window[:, :, lead + width :] = jnp.zeros((tiles, rows_in, cols - lead - width, *inner), acc_dtype)

    slot = _tpu_fetch(x_hbm, buf, sem, geo, first_step)
    middle = (slice(None),) * len(inner[:-1])  # the images dimension of the spatial-major layout
    cb = geo.channel_block
    for t in range(tiles):
        lanes = min(_LANES, cb - t * _LANES)
        source = buf[(slot, slice(None), slice(None), *middle, slice(t * _LANES, t * _LANES + lanes))]
        window[(t, slice(None), pl.ds(lead, width), *middle, slice(0, lanes))] = source.astype(acc_dtype)
    _zero_outside_image(window, geo, row_axis=1)


def _over_existing_rows(accumulate, geo: _TpuGeometry) -> None:
    """``accumulate(rows)`` with this step's static count of output rows that exist: the ragged last row
    block's tail holds no cotangent (Pallas leaves it unspecified), so the kernel gradients must not read it."""
    r = pl.program_id(2)
    last = geo.layer.output_rows - (geo.row_blocks - 1) * geo.rows
    if last == geo.rows:
        accumulate(geo.rows)
    else:
        pl.when(r < geo.row_blocks - 1)(lambda: accumulate(geo.rows))
        pl.when(r == geo.row_blocks - 1)(lambda: accumulate(last))


def _tpu_tap(window, tile: int, row: int, col: int, rows: int, geo: _TpuGeometry):
    """The window rows and columns one tap multiplies for ``rows`` output rows: ``(rows, Wo, [images,] 128)``."""
    (sh, sw), cols = geo.layer.strides, geo.layer.output_cols
    return window.at[tile][
        pl.ds(row, rows, stride=sh) if sh > 1 else pl.ds(row, rows),
        pl.ds(col, cols, stride=sw) if sw > 1 else pl.ds(col, cols),
    ]


def _tpu_forward_kernel(x_hbm, w_ref, b_ref, o_ref, buf, window, sem, *, geo, epilogue, acc_dtype):
    # x_hbm: (N, H, W, C) or (H, W, N, C) in HBM  w_ref: (taps, lanes)  b_ref: (1, lanes)
    # o_ref: (rows, Wo, cb) or (rows, Wo, images, cb)
    _tpu_window(x_hbm, buf, window, sem, geo, acc_dtype)
    lane_vector = (1,) * (o_ref.ndim - 1) + (_LANES,)  # a channel vector, broadcast over the other dims
    for t in range(geo.lane_tiles):
        lanes = pl.ds(t * _LANES, _LANES)
        acc = None
        for tap, row, col in geo.taps():
            weight = w_ref[pl.ds(tap, 1), lanes].astype(acc_dtype).reshape(lane_vector)
            term = _tpu_tap(window, t, row, col, geo.rows, geo) * weight
            acc = term if acc is None else acc + term
        acc = EPILOGUES[epilogue](acc + b_ref[:, lanes].astype(acc_dtype).reshape(lane_vector))
        width = min(_LANES, geo.channel_block - t * _LANES)
        o_ref[(*(slice(None),) * (o_ref.ndim - 1), slice(t * _LANES, t * _LANES + width))] = acc[..., :width].astype(
            o_ref.dtype
        )


def _tpu_kernel_grad_kernel(x_hbm, dy_ref, o_ref, buf, window, sem, *, geo, acc_dtype):
    # dy_ref: (rows, Wo, [images,] cb), the last row block ragged
    # o_ref: (taps, lanes) or (taps, images, lanes), resident over the row axis
    _tpu_window(x_hbm, buf, window, sem, geo, acc_dtype)
    r = pl.program_id(2)

    @pl.when(r == 0)
    def _():
        o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)

    def accumulate(rows):  # only the rows that exist: the ragged block's tail holds no cotangent
        middle = (slice(None),) * (dy_ref.ndim - 2)  # columns, and images in the spatial-major layout
        for t in range(geo.lane_tiles):
            width = min(_LANES, geo.channel_block - t * _LANES)
            dy = dy_ref[(slice(0, rows), *middle, slice(t * _LANES, t * _LANES + width))].astype(acc_dtype)
            for tap, row, col in geo.taps():
                x = _tpu_tap(window, t, row, col, rows, geo)[..., :width]
                partial = jnp.sum(jnp.sum(x * dy, axis=0), axis=0)  # over rows and columns: per image
                if geo.images:
                    o_ref[tap, :, pl.ds(t * _LANES, width)] += partial
                else:
                    o_ref[pl.ds(tap, 1), pl.ds(t * _LANES, width)] += partial[None]

    _over_existing_rows(accumulate, geo)


def _select(selection, row, acc_dtype):
    """``(Wo, full) x (C, full) -> (Wo, C)``: one output row's strided columns, channels last (MXU, exact 0/1)."""
    return lax.dot_general(
        selection, row, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST, preferred_element_type=acc_dtype
    )


def _wide_tap(window, row: int, col: int, rows: int, cols: int, row_stride: int):
    """One tap's ``(rows, cb, cols)`` of a columns-on-lanes window: a strided row load reads whole lanes
    (Mosaic's rule), and the lane window is then sliced from the value."""
    if row_stride == 1:
        return window[pl.ds(row, rows), :, pl.ds(col, cols)]
    return window[pl.ds(row, rows, stride=row_stride)][..., col : col + cols]


def _tpu_wide_forward_kernel(x_hbm, w_ref, b_ref, *refs, geo, epilogue, acc_dtype):
    # x_hbm: (N, H, C, W) in HBM  w_ref: (taps, cb, 1)  b_ref: (cb, 1), or (1, cb) with channels_last_out
    # [s_ref: (Wo, full_cols) selection]  o_ref: (rows, cb, Wo), or (rows, Wo, cb) with channels_last_out
    s_ref, o_ref, buf, window, sem = refs if geo.channels_last_out else (None, *refs)
    _tpu_window(x_hbm, buf, window, sem, geo, acc_dtype)
    rows, (sh, _) = geo.rows, geo.layer.strides
    cols = geo.full_cols if geo.channels_last_out else geo.layer.output_cols
    acc = None
    for tap, row, col in geo.taps():
        term = _wide_tap(window, row, col, rows, cols, sh) * w_ref[tap].astype(acc_dtype)[None]
        acc = term if acc is None else acc + term
    if not geo.channels_last_out:
        acc = EPILOGUES[epilogue](acc + b_ref[...].astype(acc_dtype)[None])
        o_ref[...] = acc.astype(o_ref.dtype)
        return
    selection, bias = s_ref[...].astype(acc_dtype), b_ref[...].astype(acc_dtype)
    for row in range(rows):
        o_ref[row] = EPILOGUES[epilogue](_select(selection, acc[row], acc_dtype) + bias).astype(o_ref.dtype)


def _tpu_wide_kernel_grad_kernel(x_hbm, dy_ref, *refs, geo, acc_dtype):
    # dy_ref: (rows, cb, Wo), or (rows, Wo, cb) with channels_last_out; the last row block ragged
    # [s_ref: (Wo, full_cols)]  o_ref: (taps, cb, 1), resident over the row axis
    s_ref, o_ref, buf, window, sem = refs if geo.channels_last_out else (None, *refs)
    _tpu_window(x_hbm, buf, window, sem, geo, acc_dtype)
    r, (sh, _) = pl.program_id(2), geo.layer.strides
    cols = geo.full_cols if geo.channels_last_out else geo.layer.output_cols

    @pl.when(r == 0)
    def _():
        o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)

    def accumulate(rows):
        if geo.channels_last_out:  # each row's cotangent spread back onto the stride-1 columns: (cb, full_cols)
            selection = s_ref[...].astype(acc_dtype)
            spread = [
                lax.dot_general(
                    dy_ref[row].astype(acc_dtype),
                    selection,
                    (((0,), (0,)), ((), ())),
                    precision=lax.Precision.HIGHEST,
                    preferred_element_type=acc_dtype,
                )
                for row in range(rows)
            ]
            dy = jnp.stack(spread)
        else:
            dy = dy_ref[:rows].astype(acc_dtype)
        for tap, row, col in geo.taps():
            x = _wide_tap(window, row, col, rows, cols, sh)
            o_ref[tap] += jnp.sum(jnp.sum(x * dy, axis=0), axis=-1, keepdims=True)

    _over_existing_rows(accumulate, geo)


def _tpu_call(body, x, extra_inputs, extra_specs, out_shape, out_spec, geo: _TpuGeometry, interpret, name, cost):
    acc = accumulator_dtype(x.dtype)
    layer = geo.layer
    images = (geo.images,) if geo.images else ()
    if geo.wide:
        buffers = [
            pltpu.VMEM((2, geo.rows_in, geo.channel_block, layer.input_size[1]), x.dtype),
            pltpu.VMEM((geo.rows_in, geo.channel_block, geo.window_cols), acc),
        ]
    else:
        buffers = [
            pltpu.VMEM((2, geo.rows_in, layer.input_size[1], *images, geo.channel_block), x.dtype),
            pltpu.VMEM((geo.lane_tiles, geo.rows_in, geo.window_cols, *images, _LANES), acc),
        ]
    scratch = [*buffers, pltpu.SemaphoreType.DMA((2,))]
    batch = x.shape[2] // geo.images if geo.images else x.shape[0]
    params = None
    if not interpret:
        params = pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary"), vmem_limit_bytes=VMEM_LIMIT
        )
    return pl.pallas_call(
        body,
        out_shape=out_shape,
        grid=(batch, geo.channel_blocks, geo.row_blocks),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY), *extra_specs],
        out_specs=out_spec,
        scratch_shapes=scratch,
        compiler_params=params,
        cost_estimate=cost,
        interpret=interpret,
        name=name,
    )(x, *extra_inputs)


def _tpu_lanes(a: jax.Array, geo: _TpuGeometry) -> jax.Array:
    """``(..., C)`` padded to whole 128-lane tiles per channel block (kernel and bias: a few hundred bytes)."""
    c, cb = a.shape[-1], geo.channel_block
    if cb % _LANES == 0:
        return a
    return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, geo.lane_tiles * _LANES - c)])


def _tpu_images(itemsize: int) -> int:
    """Images per step in the spatial-major layout: one sublane tile of them (8 of 32 bits, 16 of 16 bits)."""
    return 8 * max(1, 4 // itemsize)


def _lane_padding(size: int) -> float:
    return _round_up(size, _LANES) / size


def tpu_layout(layer: Layer, batch: int) -> str:
    """``"nhwc"``, ``"hwnc"``, ``"nhcw"`` or ``"nhcw>nhwc"``: the layouts the TPU kernels read and write.

    XLA's TPU layout assignment stores an ``(N, H, W, C)`` activation so as to pad the
    128-lane and 8-row tiles least, and the kernel follows it, so that the transposes around
    it are free (bitcasts) and no relayout copy runs: ``"hwnc"`` (images on the sublanes,
    layout ``{3,0,2,1}``) when the width is not a multiple of the 8-row sublane tile
    (MobileNets' 28, 14 and 7) on input and output; ``"nhcw"`` (width on the lanes, layout
    ``{2,3,1,0}``) when the width fills the lanes better than the channels on input and
    output alike (MobileNetV2's 112x112x32); ``"nhcw>nhwc"``, read with the width on the
    lanes and written with the channels on the lanes, when only the input's width does
    (a stride along the width: MobileNetV2's 112x112x96/s2); ``"nhwc"`` otherwise.
    """
    (width, out_width), channels = (layer.input_size[1], layer.output_cols), layer.channels
    if width % 8 and out_width % 8 and batch % _tpu_images(layer.itemsize) == 0:
        return "hwnc"
    if _lane_padding(width) < _lane_padding(channels):
        if _lane_padding(out_width) < _lane_padding(channels) and layer.strides[1] == 1:
            return "nhcw"
        return "nhcw>nhwc"
    return "nhwc"


def _tpu_geometry(layer: Layer, blocks: BlockSizes, batch: int) -> _TpuGeometry:
    layout = tpu_layout(layer, batch)
    images = _tpu_images(layer.itemsize) if layout == "hwnc" else 0
    wide = layout.startswith("nhcw")
    return _TpuGeometry(layer, blocks, images, wide=wide, channels_last_out=layout == "nhcw>nhwc")


def _tpu_wide_forward(x, kernel, bias, geo: _TpuGeometry, activation, out_dtype, interpret):
    """The ``(N, H, C, W)`` layout: channels on sublanes, width on lanes; free transposes where XLA stores it so."""
    layer, (n, c) = geo.layer, (x.shape[0], geo.layer.channels)
    taps, cb, (ho, wo) = len(geo.taps()), geo.channel_block, (layer.output_rows, layer.output_cols)
    bias = jnp.zeros((c,), x.dtype) if bias is None else bias
    inputs = [kernel.reshape(taps, c, 1)]
    specs = [pl.BlockSpec((taps, cb, 1), lambda i, j, r: (0, j, 0))]
    if geo.channels_last_out:
        inputs += [bias.reshape(1, c), geo.selection()]
        specs += [
            pl.BlockSpec((1, cb), lambda i, j, r: (0, j)),
            pl.BlockSpec((wo, geo.full_cols), lambda i, j, r: (0, 0)),
        ]
        out_shape, out_spec = (n, ho, wo, c), pl.BlockSpec((None, geo.rows, wo, cb), lambda i, j, r: (i, r, 0, j))
    else:
        inputs += [bias.reshape(c, 1)]
        specs += [pl.BlockSpec((cb, 1), lambda i, j, r: (j, 0))]
        out_shape, out_spec = (n, ho, c, wo), pl.BlockSpec((None, geo.rows, cb, wo), lambda i, j, r: (i, r, j, 0))
    body = functools.partial(
        _tpu_wide_forward_kernel, geo=geo, epilogue=activation, acc_dtype=accumulator_dtype(x.dtype)
    )
    nbytes = x.size * x.dtype.itemsize + n * ho * wo * c * out_dtype.itemsize
    y = _tpu_call(
        body,
        jnp.transpose(x, (0, 1, 3, 2)),
        inputs,
        specs,
        _out_struct(out_shape, out_dtype, like=x),
        out_spec,
        geo,
        interpret,
        "jdw_depthwise_forward",
        _cost(layer, n, nbytes),
    )
    return y if geo.channels_last_out else jnp.transpose(y, (0, 1, 3, 2))


def _tpu_wide_kernel_grad(x, dy, geo: _TpuGeometry, interpret):
    layer, (n, c) = geo.layer, (x.shape[0], geo.layer.channels)
    taps, cb, acc, wo = len(geo.taps()), geo.channel_block, accumulator_dtype(x.dtype), layer.output_cols
    if geo.channels_last_out:
        inputs = (dy, geo.selection())
        specs = [
            pl.BlockSpec((None, geo.rows, wo, cb), lambda i, j, r: (i, r, 0, j)),
            pl.BlockSpec((wo, geo.full_cols), lambda i, j, r: (0, 0)),
        ]
    else:
        inputs = (jnp.transpose(dy, (0, 1, 3, 2)),)
        specs = [pl.BlockSpec((None, geo.rows, cb, wo), lambda i, j, r: (i, r, j, 0))]
    grads = _tpu_call(
        functools.partial(_tpu_wide_kernel_grad_kernel, geo=geo, acc_dtype=acc),
        jnp.transpose(x, (0, 1, 3, 2)),
        inputs,
        specs,
        _out_struct((n, taps, c, 1), acc, like=x),
        pl.BlockSpec((None, taps, cb, 1), lambda i, j, r: (i, 0, j, 0)),
        geo,
        interpret,
        "jdw_depthwise_kernel_grad",
        _cost(layer, n, x.size * x.dtype.itemsize + dy.size * dy.dtype.itemsize),
    )
    return grads[..., 0]


def _tpu_forward(x, kernel, bias, layer, blocks, activation, out_dtype, interpret):
    n, c = x.shape[0], layer.channels
    geo = _tpu_geometry(layer, blocks, n)
    if geo.wide:
        return _tpu_wide_forward(x, kernel, bias, geo, activation, out_dtype, interpret)
    taps, lanes = len(geo.taps()), geo.lane_tiles * _LANES
    w = _tpu_lanes(kernel.reshape(taps, c), geo)
    b = _tpu_lanes(jnp.zeros((1, c), x.dtype) if bias is None else bias.reshape(1, c), geo)
    ho, wo = layer.output_rows, layer.output_cols
    body = functools.partial(_tpu_forward_kernel, geo=geo, epilogue=activation, acc_dtype=accumulator_dtype(x.dtype))
    nbytes = x.size * x.dtype.itemsize + n * ho * wo * c * out_dtype.itemsize
    if geo.images:  # spatial-major: free transposes where XLA stores the activations this way
        x = jnp.transpose(x, (1, 2, 0, 3))
        out_shape = (ho, wo, n, c)
        out_spec = pl.BlockSpec((geo.rows, wo, geo.images, geo.channel_block), lambda i, j, r: (r, 0, i, j))
    else:
        out_shape = (n, ho, wo, c)
        out_spec = pl.BlockSpec((None, geo.rows, wo, geo.channel_block), lambda i, j, r: (i, r, 0, j))
    y = _tpu_call(
        body,
        x,
        (w, b),
        [pl.BlockSpec((taps, lanes), lambda i, j, r: (0, j)), pl.BlockSpec((1, lanes), lambda i, j, r: (0, j))],
        _out_struct(out_shape, out_dtype, like=x),
        out_spec,
        geo,
        interpret,
        "jdw_depthwise_forward",
        _cost(layer, n, nbytes),
    )
    return jnp.transpose(y, (2, 0, 1, 3)) if geo.images else y


def _tpu_kernel_grad(x, dy, layer, blocks, interpret):
    """Per-image kernel gradients ``(N, taps, C)``."""
    n, c = x.shape[0], layer.channels
    geo = _tpu_geometry(layer, blocks, n)
    if geo.wide:
        return _tpu_wide_kernel_grad(x, dy, geo, interpret)
    taps, lanes = len(geo.taps()), geo.lane_tiles * _LANES
    acc = accumulator_dtype(x.dtype)
    body = functools.partial(_tpu_kernel_grad_kernel, geo=geo, acc_dtype=acc)
    wo, cb = layer.output_cols, geo.channel_block
    if geo.images:
        x, dy = jnp.transpose(x, (1, 2, 0, 3)), jnp.transpose(dy, (1, 2, 0, 3))
        dy_spec = pl.BlockSpec((geo.rows, wo, geo.images, cb), lambda i, j, r: (r, 0, i, j))
        out_shape = (taps, n, geo.channel_blocks * lanes)
        out_spec = pl.BlockSpec((taps, geo.images, lanes), lambda i, j, r: (0, i, j))
    else:
        dy_spec = pl.BlockSpec((None, geo.rows, wo, cb), lambda i, j, r: (i, r, 0, j))
        out_shape = (n, taps, geo.channel_blocks * lanes)
        out_spec = pl.BlockSpec((None, taps, lanes), lambda i, j, r: (i, 0, j))
    grads = _tpu_call(
        body,
        x,
        (dy,),
        [dy_spec],
        _out_struct(out_shape, acc, like=x),
        out_spec,
        geo,
        interpret,
        "jdw_depthwise_kernel_grad",
        _cost(layer, n, x.size * x.dtype.itemsize + dy.size * dy.dtype.itemsize),
    )
    grads = grads[..., :c]
    return jnp.transpose(grads, (1, 0, 2)) if geo.images else grads


# --- GPU (Triton): masked gathers from the unpadded input ---------------------------------------


@dataclasses.dataclass(frozen=True)
class _GpuGeometry:
    """The tiles of the GPU kernels (all static): each program computes ``rows x cols`` output
    positions of ``channels`` channels, all powers of two (Triton's rule for every array), and
    masks what falls past the layer's true bounds instead of padding the arrays."""

    layer: Layer
    blocks: BlockSizes

    @property
    def rows(self) -> int:
        return self.blocks.rows

    @property
    def cols(self) -> int:
        return self.blocks.cols or _gpu_cols(self.layer, self.blocks.channels)

    @property
    def channels(self) -> int:
        return self.blocks.channels

    @property
    def row_tiles(self) -> int:
        return -(-self.layer.output_rows // self.rows)

    @property
    def col_tiles(self) -> int:
        return -(-self.layer.output_cols // self.cols)

    @property
    def tiles(self) -> int:
        return self.row_tiles * self.col_tiles

    @property
    def channel_blocks(self) -> int:
        return -(-self.layer.channels // self.channels)

    @property
    def steps(self) -> int:
        """Tiles one kernel-gradient program sweeps: enough that its partial sums (one float32
        per tap and channel) are at most a sixteenth of the cotangent it reads."""
        taps = self.layer.kernel_size[0] * self.layer.kernel_size[1]
        return min(self.tiles, -(-16 * taps // (self.rows * self.cols)))

    @property
    def groups(self) -> int:
        return -(-self.tiles // self.steps)

    def positions(self, tile):
        """Output rows ``(R, 1, 1)`` and columns ``(1, W, 1)`` of flat tile ``tile``, and whether each exists.

        Stores use them as they are (masked, so that no two lanes of a store share an address,
        which the interpreter's scatter needs); loads clamp them into the array.
        """
        rows = (tile // self.col_tiles) * self.rows + jnp.arange(self.rows, dtype=jnp.int32)
        cols = (tile % self.col_tiles) * self.cols + jnp.arange(self.cols, dtype=jnp.int32)
        ok = (rows < self.layer.output_rows)[:, None, None] & (cols < self.layer.output_cols)[None, :, None]
        return rows[:, None, None], cols[None, :, None], ok

    def clamped(self, rows, cols):
        return jnp.minimum(rows, self.layer.output_rows - 1), jnp.minimum(cols, self.layer.output_cols - 1)

    def channel_range(self, block):
        """Channels ``(C,)`` of channel block ``block`` and whether each exists (clamp them to load)."""
        channels = block * self.channels + jnp.arange(self.channels, dtype=jnp.int32)
        return channels, channels < self.layer.channels

    def source(self, rows, cols, i: int, j: int):
        """The input row and column tap ``(i, j)`` reads for output ``rows`` and ``cols``, clamped into
        the image, and whether it is a real input element (not zero padding or a dilation hole)."""
        layer = self.layer
        found = []
        for out, tap, axis in ((rows, i, 0), (cols, j, 1)):
            size, lhs = layer.input_size[axis], layer.input_dilation[axis]
            at = out * layer.strides[axis] + (tap * layer.dilation[axis] - layer.padding[axis][0])
            ok = (at >= 0) & (at <= (size - 1) * lhs)
            if lhs > 1:
                ok = ok & (lax.rem(at, jnp.int32(lhs)) == 0)
                at = lax.div(jnp.maximum(at, 0), jnp.int32(lhs))
            found.append((jnp.clip(at, 0, size - 1), ok))
        (r, r_ok), (c, c_ok) = found
        return r, c, r_ok & c_ok

    def compiler_params(self, interpret: Any) -> Any:
        if interpret:
            return None
        from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415  (GPU-only module)

        return pltriton.CompilerParams(num_warps=GPU_WARPS, num_stages=1)


def _gpu_cols(layer: Layer, channels: int) -> int:
    """Output columns per GPU tile: 8 for images, as many as the tile holds for one-row (1-D) layers."""
    cols = 8 if layer.output_rows > 1 else GPU_TILE_ELEMENTS // channels
    return max(1, min(_next_power_of_two(layer.output_cols), cols))


def _gpu_load(ref, index, mask):
    from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415

    return pltriton.load(ref.at[index], mask=mask, other=0)


def _gpu_taps(x_ref, image, rows, cols, channels, mask, geo: _GpuGeometry, acc_dtype):
    """Yields ``(tap, x)`` with ``x`` the ``(R, W, C)`` input elements tap ``tap`` multiplies, zero where it
    reads padding."""
    kh, kw = geo.layer.kernel_size
    for i in range(kh):
        for j in range(kw):
            r, c, ok = geo.source(rows, cols, i, j)
            yield i * kw + j, _gpu_load(x_ref, (image, r, c, channels[None, None, :]), mask & ok).astype(acc_dtype)


def _clamp(channels, geo: _GpuGeometry):
    return jnp.minimum(channels, geo.layer.channels - 1)


def _gpu_forward_kernel(x_ref, w_ref, b_ref, o_ref, *, geo: _GpuGeometry, epilogue, acc_dtype):
    # x_ref: (N, H, W, C) as stored, w_ref: (taps, C), b_ref: (C,), o_ref: (N, Ho, Wo, C); grid (tiles, C blocks, N)
    from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415

    tile, block, image = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    rows, cols, exists = geo.positions(tile)
    channels, known = geo.channel_range(block)
    mask, loaded = exists & known[None, None, :], _clamp(channels, geo)
    acc = jnp.zeros((geo.rows, geo.cols, geo.channels), acc_dtype)
    for t, x in _gpu_taps(x_ref, image, rows, cols, loaded, mask, geo, acc_dtype):
        acc += x * _gpu_load(w_ref, (t, loaded), known).astype(acc_dtype)[None, None, :]
    acc += _gpu_load(b_ref, (loaded,), known).astype(acc_dtype)[None, None, :]
    y = EPILOGUES[epilogue](acc).astype(o_ref.dtype)
    pltriton.store(o_ref.at[image, rows, cols, channels[None, None, :]], y, mask=mask)


def _gpu_kernel_grad_kernel(x_ref, dy_ref, o_ref, *, geo: _GpuGeometry, acc_dtype):
    # x_ref: (N, H, W, C), dy_ref: (N, Ho, Wo, C), o_ref: (N, groups, taps, C) partial sums; grid (groups, C blocks, N)
    from jax.experimental.pallas import triton as pltriton  # noqa: PLC0415

    group, block, image = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    channels, known = geo.channel_range(block)
    loaded, taps = _clamp(channels, geo), geo.layer.kernel_size[0] * geo.layer.kernel_size[1]

    def step(s, sums):
        tile = group * geo.steps + s
        rows, cols, exists = geo.positions(tile)
        mask = exists & known[None, None, :] & (tile < geo.tiles)
        rows, cols = geo.clamped(rows, cols)
        dy = _gpu_load(dy_ref, (image, rows, cols, loaded[None, None, :]), mask).astype(acc_dtype)
        sums = list(sums)
        for t, x in _gpu_taps(x_ref, image, rows, cols, loaded, mask, geo, acc_dtype):
            sums[t] += jnp.sum(jnp.sum(x * dy, axis=0), axis=0)
        return tuple(sums)

    sums = lax.fori_loop(0, geo.steps, step, tuple(jnp.zeros((geo.channels,), acc_dtype) for _ in range(taps)))
    for t, total in enumerate(sums):
        pltriton.store(o_ref.at[image, group, t, channels], total, mask=known)


def _gpu_forward(x, kernel, bias, layer, blocks, activation, out_dtype, interpret):
    n, c = x.shape[0], layer.channels
    geo = _GpuGeometry(layer, blocks)
    taps = layer.kernel_size[0] * layer.kernel_size[1]
    bias = jnp.zeros((c,), x.dtype) if bias is None else bias
    out_shape = (n, layer.output_rows, layer.output_cols, c)
    nbytes = x.size * x.dtype.itemsize + math.prod(out_shape) * out_dtype.itemsize
    return pl.pallas_call(
        functools.partial(_gpu_forward_kernel, geo=geo, epilogue=activation, acc_dtype=accumulator_dtype(x.dtype)),
        out_shape=_out_struct(out_shape, out_dtype, like=x),
        grid=(geo.tiles, geo.channel_blocks, n),
        compiler_params=geo.compiler_params(interpret),
        cost_estimate=_cost(layer, n, nbytes),
        interpret=interpret,
        name="jdw_depthwise_forward",
    )(x, kernel.reshape(taps, c), bias)


def _gpu_kernel_grad(x, dy, layer, blocks, interpret):
    """Per-image kernel gradients ``(N, taps, C)``: each program's partial sums, added up by XLA."""
    n, c = x.shape[0], layer.channels
    geo = _GpuGeometry(layer, blocks)
    taps, acc = layer.kernel_size[0] * layer.kernel_size[1], accumulator_dtype(x.dtype)
    partials = pl.pallas_call(
        functools.partial(_gpu_kernel_grad_kernel, geo=geo, acc_dtype=acc),
        out_shape=_out_struct((n, geo.groups, taps, c), acc, like=x),
        grid=(geo.groups, geo.channel_blocks, n),
        compiler_params=geo.compiler_params(interpret),
        cost_estimate=_cost(layer, n, x.size * x.dtype.itemsize + dy.size * dy.dtype.itemsize),
        interpret=interpret,
        name="jdw_depthwise_kernel_grad",
    )(x, dy)
    return jnp.sum(partials, axis=1)


# --- the kernels, for either target ---------------------------------------------------------------


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
    blocks = _blocks(x, layer, block_sizes, target, interpret)
    out_dtype = np.dtype(out_dtype or x.dtype)
    if target == "tpu":
        tpu_layer = _tpu_layer(layer)
        return _tpu_forward(_tpu_input(x, layer), kernel, bias, tpu_layer, blocks, activation, out_dtype, interpret)
    return _gpu_forward(x, kernel, bias, layer, blocks, activation, out_dtype, interpret)


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

    On TPU each image's taps accumulate in a block that stays in VMEM while the row blocks
    sweep past it; on GPU every program sweeps a few tiles and writes its own partial
    sums (no program waits on another). One small XLA reduction adds them up. With ``per_image=True`` the result
    keeps the batch axis, ``(N, kh, kw, C)``, so that a batch-sharded caller can leave the
    sum over images (and devices) to XLA.
    """
    blocks = _blocks(x, layer, block_sizes, target, interpret)
    n, c = x.shape[0], layer.channels
    if dy.shape != (n, layer.output_rows, layer.output_cols, c):
        raise ValueError(
            f"expected dy of shape {(n, layer.output_rows, layer.output_cols, c)} for {layer}, got {dy.shape}"
        )
    if target == "tpu":
        grads = _tpu_kernel_grad(_tpu_input(x, layer), dy, _tpu_layer(layer), blocks, interpret)
    else:
        grads = _gpu_kernel_grad(x, dy, layer, blocks, interpret)
    grads = grads.reshape(n, *layer.kernel_size, c)
    return grads if per_image else jnp.sum(grads, axis=0)


def reference(x: jax.Array, kernel: jax.Array, layer: Layer) -> jax.Array:
    """The same convolution with XLA's grouped convolution, for tests: ``(N, H, W, C)``, ``(kh, kw, C)``."""
    c = x.shape[-1]
    return lax.conv_general_dilated(
        x,
        kernel.reshape(*layer.kernel_size, 1, c),
        window_strides=layer.strides,
        padding=layer.padding,
        lhs_dilation=layer.input_dilation,
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
    "reference",
    "tpu_layout",
    "vmem_bytes",
]
