"""The ``"taps"`` backend: depthwise convolution as a sum over kernel taps, in pure JAX.

For every kernel tap the input is sliced (shifted, strided) and multiplied by that
tap's per-channel weights; XLA fuses the whole sum into one loop over the output.
Three things make it fast where XLA's grouped convolution is slow:

* **No padded copy.** Materialising ``jnp.pad(x)`` costs a full pass over memory,
  as much as the convolution itself. Instead the output is split, per spatial
  dimension, into the part whose window lies inside the input (read straight from
  ``x``) and the thin borders whose window overlaps the padding (computed from
  small padded slabs); :func:`lax.concatenate` joins them inside one fusion.
* **Its own derivatives.** The convolution, its adjoint in the input (the transposed
  convolution, computed the same way) and its adjoint in the kernel are JAX primitives
  whose derivatives are one another (:mod:`jdw.backends.primitives`), so ``grad``, ``jvp``
  and every higher order run on tap sums. The kernel gradient, a reduction over batch and
  space, is first summed over a group of images with fused multiply-adds, since XLA's CPU
  reductions over sliced operands are slow. Autodiff's version costs ~10 passes over memory.
* **Low precision accumulates in float32** (bf16/f16 inputs), at no extra memory
  traffic since the casts fuse into the loop.

"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdw import geometry as geometry_lib
from jdw.backends import primitives, registry
from jdw.geometry import Geometry

# The kernel gradient sums up to this many products per output element in one fused
# loop (taps x batch group): larger groups mean fewer passes but longer compiles.
_MAX_FUSED_PRODUCTS = 288
_MAX_BATCH_GROUP = 32


@dataclasses.dataclass(frozen=True)
class _Static:
    """The static part of one tap-sum call: the convolution's geometry, multiplier and result dtype."""

    geometry: Geometry
    multiplier: int
    dtype: str  # dtype of the op's result


def _compute_dtype(*dtypes) -> np.dtype:
    """float32 for low-precision floats, otherwise the promoted dtype."""
    with jax.numpy_dtype_promotion("standard"):
        return np.dtype(jnp.result_type(*dtypes, jnp.float32))


def _taps(kernel_size: Sequence[int]):
    return list(np.ndindex(*kernel_size))


def _over_regions(
    x: jax.Array,
    geometry: Geometry,
    leaf: Callable,
    combine: Callable,
    *,
    dim: int = 0,
    ranges: tuple[tuple[int, int], ...] = (),
):
    """Splits the output along each spatial dim into (border, interior, border) regions.

    For each region, ``leaf(x_piece, ranges, interior)`` receives exactly the input
    its outputs read and the output index ranges, one ``(start, stop)`` per spatial
    dim; ``combine(parts, axis)`` joins the parts of one dimension. Only the interior
    is split further, so there are ``2 * num_spatial + 1`` regions: a border slab is
    thin, and padding it in every remaining dimension is cheap. Spatial dims of ``x``
    (of ``geometry.input_size``, non-negative padding) are axes ``1 .. num_spatial``;
    trailing axes are carried along.
    """
    nd = geometry.num_spatial
    if dim == nd:
        return leaf(x, ranges, True)
    axis = 1 + dim
    n = x.shape[axis]
    s, (pl, _) = geometry.strides[dim], geometry.padding[dim]
    ke, out = geometry.kernel_span[dim], geometry.output_size[dim]
    lo = min(out, -(-pl // s))  # first output whose window starts inside the input
    hi = max(lo, min(out, (n - ke + pl) // s + 1))  # first output whose window ends past it
    parts = []
    for o0, o1, border in ((0, lo, True), (lo, hi, False), (hi, out, True)):
        if o1 <= o0:
            continue
        a, b = o0 * s - pl, (o1 - 1) * s - pl + ke  # input range read, in unpadded coordinates
        start = min(max(a, 0), n)
        stop = max(min(b, n), start)
        piece = lax.slice_in_dim(x, start, stop, axis=axis)
        if not border:
            parts.append(_over_regions(piece, geometry, leaf, combine, dim=dim + 1, ranges=ranges + ((o0, o1),)))
            continue
        config = [(0, 0, 0)] * x.ndim
        config[axis] = (start - a, b - stop, 0)
        for e in range(dim + 1, nd):
            config[1 + e] = (*geometry.padding[e], 0)
        rest = tuple((0, o) for o in geometry.output_size[dim + 1 :])
        piece = lax.pad(piece, jnp.zeros((), x.dtype), config)
        parts.append(leaf(piece, ranges + ((o0, o1), *rest), False))
    return combine(parts, axis)


def _concatenate(parts, axis):
    return parts[0] if len(parts) == 1 else lax.concatenate(parts, axis)


def _broadcast_weights(w_tap: jax.Array, rank: int) -> jax.Array:
    return w_tap.reshape((1,) * (rank - w_tap.ndim) + w_tap.shape)


def _tap_sum(x, w, strides, dilation, compute_dtype):
    """Valid (unpadded) tap sum. ``x``: (N, *spatial, C, Mx), ``w``: (*k, C, M) -> (N, *out, C, M)."""
    nd = len(strides)
    kernel_size = w.shape[:nd]
    spatial = x.shape[1 : 1 + nd]
    out = [geometry_lib.output_size(n, (0, 0), k, s, d) for n, k, s, d in zip(spatial, kernel_size, strides, dilation)]
    w = w.astype(compute_dtype)
    trailing = list(x.shape[1 + nd :])
    acc = None
    for tap in _taps(kernel_size):
        start = [0, *(t * d for t, d in zip(tap, dilation)), *([0] * len(trailing))]
        limit = [x.shape[0], *(t * d + (o - 1) * s + 1 for t, d, o, s in zip(tap, dilation, out, strides)), *trailing]
        window = lax.slice(x, start, limit, [1, *strides, *([1] * len(trailing))])
        term = window.astype(compute_dtype) * _broadcast_weights(w[tap], x.ndim)
        acc = term if acc is None else acc + term
    return acc


def _conv_regions(x, w, geometry: Geometry, compute_dtype):
    """Zero-padded tap sum without a padded copy of ``x``. Shapes as in :func:`_tap_sum`."""
    leaf = lambda piece, ranges, interior: _tap_sum(  # noqa: E731
        piece, w, geometry.strides, geometry.dilation, compute_dtype
    )
    return _over_regions(x, geometry, leaf, _concatenate)


def _grouped_kernel(kernel: jax.Array, multiplier: int) -> jax.Array:
    """(*k, 1, C * M) -> (*k, C, M)."""
    nd = kernel.ndim - 2
    return kernel.reshape(kernel.shape[:nd] + (kernel.shape[-1] // multiplier, multiplier))


# Jitted so that eager callers compile the many slices once, not op by op.
@functools.partial(jax.jit, static_argnums=2)
def _forward_impl(x, kernel, static: _Static) -> jax.Array:
    compute = _compute_dtype(x.dtype, kernel.dtype)
    w = _grouped_kernel(kernel, static.multiplier)
    y = _conv_regions(x[..., None], w, static.geometry, compute)
    return y.reshape(y.shape[:-2] + (-1,)).astype(static.dtype)


@functools.partial(jax.jit, static_argnums=2)
def _adjoint_impl(y, kernel, static: _Static) -> jax.Array:
    """The adjoint (transpose) of :func:`_forward_impl` in ``x``: (N, *out, C*M) -> (N, *in, C)."""
    nd = static.geometry.num_spatial
    compute = _compute_dtype(y.dtype, kernel.dtype)
    w = lax.rev(_grouped_kernel(kernel, static.multiplier), tuple(range(nd)))
    y = y.reshape(y.shape[:-1] + (-1, static.multiplier))
    # The adjoint is a stride-1 convolution of the stride-dilated y with the flipped kernel; the
    # dilation and any crops happen in lax.pad, the zero padding in the regions.
    adjoint = static.geometry.adjoint()
    config, padding = adjoint.split_padding()
    if any(c != (0, 0, 0) for c in config):
        y = lax.pad(y, jnp.zeros((), y.dtype), [(0, 0, 0), *config, (0, 0, 0), (0, 0, 0)])
    dilated = Geometry(y.shape[1 : 1 + nd], adjoint.kernel_size, padding=padding, dilation=adjoint.dilation)
    x = _conv_regions(y, w, dilated, compute)
    x = x[..., 0] if static.multiplier == 1 else jnp.sum(x, axis=-1)
    return x.astype(static.dtype)


def _batch_group(batch: int, num_taps: int, shards: int = 1) -> int:
    """Largest divisor of ``batch`` whose products per output fit the fused-loop budget.

    With the batch split over ``shards`` devices (explicit mesh axes), the number of groups
    must stay a multiple of ``shards``: the group index is then what is sharded.
    """
    limit = max(1, min(_MAX_BATCH_GROUP, _MAX_FUSED_PRODUCTS // num_taps))
    return max(g for g in range(1, min(batch, limit) + 1) if batch % g == 0 and (batch // g) % shards == 0)


def _batch_shards(x: jax.Array) -> int:
    """How many devices ``x``'s batch is split over in its type (explicit mesh axes), else 1."""
    sharding = jax.typeof(x).sharding
    spec = tuple(getattr(sharding, "spec", ())) + (None,)
    if spec[0] is None or getattr(sharding.mesh, "empty", True):
        return 1
    axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    return int(np.prod([sharding.mesh.shape[a] for a in axes]))


@functools.partial(jax.jit, static_argnums=2)
def _kernel_grad(x, dy, static: _Static) -> jax.Array:
    """d<dy, conv(x, k)>/dk: (N, *in, C), (N, *out, C*M) -> (*k, 1, C*M) in the compute dtype."""
    geom = static.geometry
    nd = geom.num_spatial
    compute = _compute_dtype(x.dtype, dy.dtype)
    dy = dy.reshape(dy.shape[:-1] + (-1, static.multiplier))
    taps = _taps(geom.kernel_size)
    shards = _batch_shards(x)

    def leaf(piece, ranges, interior):
        piece = piece[..., None]
        dy_piece = dy
        for dim, (o0, o1) in enumerate(ranges):
            dy_piece = lax.slice_in_dim(dy_piece, o0, o1, axis=1 + dim)
        out = [o1 - o0 for o0, o1 in ranges]
        batch = piece.shape[0]
        group = _batch_group(batch, len(taps), shards) if interior else 1
        # Image g of every group of `group` images: indexed after a reshape, not with a batch-strided
        # slice, which XLA's SPMD partitioner gets wrong on a batch-sharded input (jax 0.10, 8 CPU devices).
        piece = piece.reshape((batch // group, group) + piece.shape[1:])
        dy_piece = dy_piece.reshape((batch // group, group) + dy_piece.shape[1:])
        partials = []
        for tap in taps:
            acc = None
            for g in range(group):
                start = [0, *(t * d for t, d in zip(tap, geom.dilation)), 0, 0]
                limit = [
                    batch // group,
                    *(t * d + (o - 1) * s + 1 for t, d, o, s in zip(tap, geom.dilation, out, geom.strides)),
                    *piece.shape[-2:],
                ]
                image = lax.index_in_dim(piece, g, 1, keepdims=False)
                window = lax.slice(image, start, limit, [1, *geom.strides, 1, 1])
                grad = lax.index_in_dim(dy_piece, g, 1, keepdims=False)
                term = window.astype(compute) * grad.astype(compute)
                acc = term if acc is None else acc + term
            partials.append(acc)
        # Taps on the major axis: the reduction then runs over contiguous memory per tap.
        return jnp.sum(jnp.stack(partials), axis=tuple(range(1, nd + 2)))

    combine = lambda parts, axis: functools.reduce(jnp.add, parts)  # noqa: E731
    grad = _over_regions(x, geom, leaf, combine)
    # One axis change per reshape: JAX's sharding rules for reshape (explicit meshes, jax 0.10)
    # accept merging (C, M) or splitting the tap axis, not both at once with a new unit axis.
    taps, channels, multiplier = grad.shape
    grad = grad.reshape(taps, channels * multiplier).reshape(geom.kernel_size + (channels * multiplier,))
    return jnp.expand_dims(grad, -2)


def _forward_map(x, kernel, *, static: _Static, dtype) -> jax.Array:
    return _forward_impl(x, kernel, dataclasses.replace(static, dtype=np.dtype(dtype).name))


def _adjoint_map(y, kernel, *, static: _Static, dtype) -> jax.Array:
    return _adjoint_impl(y, kernel, dataclasses.replace(static, dtype=np.dtype(dtype).name))


def _kernel_grad_map(x, y, *, static: _Static, dtype) -> jax.Array:
    return _kernel_grad(x, y, static).astype(dtype)


# Each map's derivatives are the others (jdw.backends.primitives), so gradients of any order and
# forward-mode derivatives all stay on the tap sums.
OPS = primitives.LinearOps("taps", forward=_forward_map, transpose=_adjoint_map, kernel_grad=_kernel_grad_map)


# --- Packed sequences: the causal 1-D tap sum with a segment mask ----------------------------------
#
# For jdw.causal_conv1d with segment_ids: y[b, t] = Σ_i k[i] · xp[b, t + i·d] over the taps whose lag
# (pad - i·d, with pad = (W - 1)·d) is at most reach[b, t], the number of earlier tokens of t's own
# segment that it may read (xp is the chunk with its pad past tokens in front). reach is the mask
# operand of the primitives; the three maps apply it with the same value, so they stay each other's
# adjoints.


@dataclasses.dataclass(frozen=True)
class _Causal:
    """The static part of a segment-masked causal tap sum: kernel width, dilation, multiplier, result dtype."""

    width: int
    dilation: int
    multiplier: int
    dtype: str

    @property
    def pad(self) -> int:
        return (self.width - 1) * self.dilation

    def readable(self, reach: jax.Array, tap: int) -> jax.Array:
        """``(N, L, 1)``: whether tap ``tap`` may be read at each output."""
        return (reach >= self.pad - tap * self.dilation)[..., None]

    def spread(self, xp: jax.Array) -> jax.Array:
        """Input channel ``c`` repeated for its ``M`` outputs ``c*M + m``: every array stays ``(N, L, channels)``
        (a trailing multiplier axis of size 1 would fill TPU lanes with padding)."""
        return xp if self.multiplier == 1 else jnp.repeat(xp, self.multiplier, axis=-1)


@functools.partial(jax.jit, static_argnums=3)
def _causal_forward(xp, kernel, reach, static: _Causal) -> jax.Array:
    """(N, L + pad, C), (W, 1, C*M), (N, L) -> (N, L, C*M)."""
    compute = _compute_dtype(xp.dtype, kernel.dtype)
    w = kernel[:, 0].astype(compute)
    xp = static.spread(xp)
    length = reach.shape[1]
    acc = None
    for i in range(static.width):
        window = lax.slice_in_dim(xp, i * static.dilation, i * static.dilation + length, axis=1).astype(compute)
        term = jnp.where(static.readable(reach, i), window * w[i][None, None], 0)
        acc = term if acc is None else acc + term
    return acc.astype(static.dtype)


@functools.partial(jax.jit, static_argnums=3)
def _causal_adjoint(y, kernel, reach, static: _Causal) -> jax.Array:
    """The adjoint in ``xp``: (N, L, C*M), (W, 1, C*M), (N, L) -> (N, L + pad, C)."""
    compute = _compute_dtype(y.dtype, kernel.dtype)
    w = kernel[:, 0].astype(compute)
    pad, length = static.pad, reach.shape[1]
    # xp[s] gathers y[s - i·d] for every tap: slices of y padded once on both sides (the mask padded
    # with "unreadable"), so the sum is one fused loop with no scatter.
    y = lax.pad(y, jnp.zeros((), y.dtype), [(0, 0, 0), (pad, pad, 0), (0, 0, 0)])
    reach = lax.pad(reach, jnp.asarray(-1, reach.dtype), [(0, 0, 0), (pad, pad, 0)])
    acc = None
    for i in range(static.width):
        start = pad - i * static.dilation
        window = lax.slice_in_dim(y, start, start + length + pad, axis=1).astype(compute)
        readable = static.readable(lax.slice_in_dim(reach, start, start + length + pad, axis=1), i)
        term = jnp.where(readable, window * w[i][None, None], 0)
        acc = term if acc is None else acc + term
    if static.multiplier > 1:
        acc = jnp.sum(acc.reshape(acc.shape[:-1] + (-1, static.multiplier)), axis=-1)
    return acc.astype(static.dtype)


@functools.partial(jax.jit, static_argnums=3)
def _causal_kernel_grad(xp, dy, reach, static: _Causal) -> jax.Array:
    """The adjoint in the kernel: (N, L + pad, C), (N, L, C*M), (N, L) -> (W, 1, C*M).

    Summed over a group of images with fused multiply-adds first, like :func:`_kernel_grad`.
    """
    compute = _compute_dtype(xp.dtype, dy.dtype)
    batch, length = reach.shape
    xp = static.spread(xp)
    group = _batch_group(batch, static.width, _batch_shards(xp))
    xp, dy, reach = (a.reshape((batch // group, group) + a.shape[1:]) for a in (xp, dy, reach))
    partials = []
    for i in range(static.width):
        acc = None
        for g in range(group):
            image = lax.index_in_dim(xp, g, 1, keepdims=False)
            window = lax.slice_in_dim(image, i * static.dilation, i * static.dilation + length, axis=1)
            grad = lax.index_in_dim(dy, g, 1, keepdims=False).astype(compute)
            readable = static.readable(lax.index_in_dim(reach, g, 1, keepdims=False), i)
            term = jnp.where(readable, window.astype(compute) * grad, 0)
            acc = term if acc is None else acc + term
        partials.append(acc)
    grad = jnp.sum(jnp.stack(partials), axis=(1, 2))  # (W, C*M)
    return grad[:, None]


def _causal_map(fn):
    def apply(a, b, reach, *, static: _Causal, dtype):
        return fn(a, b, reach, dataclasses.replace(static, dtype=np.dtype(dtype).name)).astype(dtype)

    return apply


CAUSAL_OPS = primitives.LinearOps(
    "taps_causal",
    forward=_causal_map(_causal_forward),
    transpose=_causal_map(_causal_adjoint),
    kernel_grad=_causal_map(_causal_kernel_grad),
)


def segment_conv(xp, kernel, reach, *, dilation: int, preferred_element_type=None) -> jax.Array:
    """The causal 1-D tap sum of packed sequences (see :attr:`jdw.backends.Backend.segment_conv`)."""
    static = _Causal(kernel.shape[0], dilation, kernel.shape[-1] // xp.shape[-1], "float32")
    dtype = np.dtype(preferred_element_type or jnp.result_type(xp, kernel))
    return primitives.conv(xp, kernel, reach, ops=CAUSAL_OPS, static=static, dtype=dtype)


def static_of(x, kernel, geometry: Geometry, preferred_element_type=None) -> _Static:
    """The static part of ``conv(x, kernel)`` over ``geometry`` (shared by the backends built on these primitives)."""
    return _Static(geometry, kernel.shape[-1] // x.shape[-1], np.dtype(preferred_element_type or x.dtype).name)


def conv(
    x, kernel, geometry: Geometry, *, precision=None, preferred_element_type=None, ops: primitives.LinearOps = OPS
) -> jax.Array:
    """Depthwise convolution by tap sums (or by ``ops``' maps). ``precision`` is unused: products are elementwise."""
    del precision
    static = static_of(x, kernel, geometry, preferred_element_type)
    return primitives.conv(x, kernel, ops=ops, static=static, dtype=static.dtype)


def conv_transpose(
    y, kernel, geometry: Geometry, *, precision=None, preferred_element_type=None, ops: primitives.LinearOps = OPS
) -> jax.Array:
    """Transposed depthwise convolution: the adjoint of :func:`conv` over ``geometry``, channel ``c`` -> ``c*M + m``."""
    del precision
    multiplier = kernel.shape[-1] // y.shape[-1]
    if multiplier > 1:
        y = jnp.repeat(y, multiplier, axis=-1)
    static = _Static(geometry, 1, np.dtype(preferred_element_type or y.dtype).name)
    return primitives.conv_transpose(y, kernel, ops=ops, static=static, dtype=static.dtype)


BACKEND = registry.register(
    registry.Backend(
        name="taps",
        conv=conv,
        conv_transpose=conv_transpose,
        description="sum over kernel taps of shifted slices, fused by XLA, with its own derivatives",
        segment_conv=segment_conv,
    )
)
