"""C++ loops for XLA:CPU (XLA FFI custom calls) behind the ``"cpu"`` backend.

Three calls for the convolution, on channels-last operands with one to three spatial
dimensions and a kernel ``(*kernel_size, C)``; the data and the kernel may be float32 or bfloat16
(the loops widen a bfloat16 kernel; sums are float32):

=================================  ==========================================================
:func:`forward`                    ``y[o] = act(Σ_k x[o*s - p + k*d] * w[k] + b)``
:func:`transpose`                  its adjoint in ``x``: ``dx[i] = Σ_k dy[(i + p - k*d)/s] * w[k]``
:func:`kernel_grad`                its adjoint in ``w``: ``dw[k] = Σ_{n,o} x[n, o*s - p + k*d] * dy[n, o]``
=================================  ==========================================================

Each is one loop over the destination that reads every operand once, with the taps that
reach a position looked up per dimension (``cpu_depthwise.cc``): no padded, strided or
dilated copy is made, and the kernel gradient keeps its partial sums in cache, where XLA's
CPU emitters make one pass over the operands per tap. A fourth, :func:`causal_update`, is the
decoding step of :func:`jdw.causal_conv1d_update`, with the state operand aliased to the new
state, so that XLA updates it in place. Rows are shared out to XLA's intra-op
thread pool. The loops are compiled for AVX-512 (with and without its bfloat16 conversions),
AVX2 and the baseline, and the widest the CPU runs is picked at import (:func:`instruction_set`).
With AVX512-BF16, a bfloat16 forward pass whose kernel holds bfloat16 values exactly multiplies
pairs of 5x5 and 7x7 taps in one ``vdpbf16ps`` (which reads subnormals, below 1.2e-38, as zero).
A destination larger than an eighth of the last-level cache is written with non-temporal stores
(:func:`stream_bytes`).

The extension is built with the package (``setup.py``); where it could not be built,
:data:`AVAILABLE` is ``False`` and ``"cpu"`` is not a backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jdw.geometry import Geometry
from jdw.kernels import cpu_target

try:
    from jdw.kernels import _cpu_depthwise
except ImportError:  # built without a C++ compiler, or on a platform the extension does not support
    _cpu_depthwise = None

#: Whether the C++ extension was built and loaded.
AVAILABLE = _cpu_depthwise is not None

#: Data types the loops read and write (the kernel and bias too; they are summed in float32).
DTYPES = (np.dtype(np.float32), np.dtype(jnp.bfloat16))

#: The most spatial dimensions the loops take.
MAX_SPATIAL = 3

#: The activations :func:`forward` applies before it stores (with the bias), by name, and their
#: codes in ``cpu_depthwise.cc``.
ACTIVATIONS = {"identity": 0, "relu": 1, "relu6": 2, "hard_sigmoid": 3, "hard_swish": 4, "silu": 5, "swish": 5}

_TARGETS = {name: f"jdw_depthwise_{name}" for name in ("forward", "transpose", "kernel_grad", "causal_update")}

#: What :func:`jax.export.export` needs to serialize a CPU program that calls the loops: they are
#: jdw's own custom calls, with no compatibility guarantee from JAX, so it refuses them by default.
#: The exported program runs where this version of jdw is imported (which registers them).
#: ``jax.export.export(f, platforms=["cpu"], disabled_checks=cpu_depthwise.EXPORT_CHECKS)``.
EXPORT_CHECKS = tuple(jax.export.DisabledSafetyCheck.custom_call(target) for target in _TARGETS.values())

if AVAILABLE:
    cpu_target.check_environment()
    for _name, _capsule in _cpu_depthwise.handlers().items():
        jax.ffi.register_ffi_target(_TARGETS[_name], _capsule, platform="cpu")


def instruction_set() -> str | None:
    """The instruction set the loops run with on this CPU, or ``None`` where the extension is not built.

    The widest of ``"avx512_bf16"`` (AVX-512 with the bfloat16 conversions: Cooper Lake, Sapphire
    Rapids, Zen 4), ``"avx512"``, ``"avx2"`` and ``"baseline"`` that the CPU runs, or a narrower one
    named by the environment variable ``JDW_CPU_INSTRUCTION_SET`` (read at import; another value
    warns and is ignored, see :mod:`jdw.kernels.cpu_target`).

    Examples:
      >>> from jdw.kernels import cpu_depthwise
      >>> cpu_depthwise.instruction_set() in ("avx512_bf16", "avx512", "avx2", "baseline", None)
      True
    """
    return _cpu_depthwise.instruction_set() if AVAILABLE else None


def stream_bytes() -> int | None:
    """The destination size in bytes from which the loops write it with non-temporal stores.

    A destination at least this large (an eighth of the last-level cache's size and at least 1 MiB,
    or the environment variable ``JDW_CPU_STREAM_BYTES``, read once) is written with streaming
    stores, which do not first read each cache line as an ordinary store does: the cache is shared
    with the other cores, and such a destination was measured to have left it before the next
    operation reads it. ``None`` where the extension is not built.

    Examples:
      >>> from jdw.kernels import cpu_depthwise
      >>> cpu_depthwise.stream_bytes() is None or cpu_depthwise.stream_bytes() >= 0
      True
    """
    return _cpu_depthwise.stream_bytes() if AVAILABLE else None


def supports(geometry: Geometry, *dtypes) -> bool:
    """Whether the loops compute a convolution over ``geometry`` on data of ``dtypes`` (``None`` entries ignored).

    Examples:
      >>> import numpy as np
      >>> from jdw.geometry import Geometry
      >>> from jdw.kernels import cpu_depthwise
      >>> g = Geometry((8, 8), (3, 3), padding=((1, 1), (1, 1)))
      >>> cpu_depthwise.supports(g, np.float32) == cpu_depthwise.AVAILABLE
      True
      >>> cpu_depthwise.supports(g, np.float16)
      False
    """
    return (
        AVAILABLE
        and geometry.num_spatial <= MAX_SPATIAL
        and geometry.input_dilation == (1,) * geometry.num_spatial
        and all(lo >= 0 and hi >= 0 for lo, hi in geometry.padding)
        and all(np.dtype(d) in DTYPES for d in dtypes if d is not None)
    )


def _attribute(geometry: Geometry, batch: int, channels: int) -> np.ndarray:
    """The 20 integers ``cpu_depthwise.cc`` reads: the geometry as 3-D, unit dimensions in front."""
    lead = MAX_SPATIAL - geometry.num_spatial

    def three(values, fill):
        return [fill] * lead + list(values)

    values = [batch, channels]
    values += three(geometry.input_size, 1)
    values += three(geometry.output_size, 1)
    values += three(geometry.kernel_size, 1)
    values += three(geometry.strides, 1)
    values += three((lo for lo, _ in geometry.padding), 0)
    values += three(geometry.dilation, 1)
    return np.asarray(values, dtype=np.int64)


def _call(name: str, result: jax.ShapeDtypeStruct, *operands, geometry: Geometry, batch: int, channels: int, **attrs):
    call = jax.ffi.ffi_call(_TARGETS[name], result)
    return call(*operands, geometry=_attribute(geometry, batch, channels), **attrs)


def _operand(a: jax.Array) -> jax.Array:
    """A kernel or bias as the loops take it: float32 or bfloat16 as it is, other dtypes as float32.

    The loops widen a bfloat16 kernel themselves. Under JAX's default (async) dispatch an XLA
    ``convert`` in front of the call would make the program two thunks, which XLA:CPU runs off the
    calling thread: a bfloat16 forward pass of 14x14x576 (stride 2, batch 1) took 47-88 us instead
    of 16-30 (docs/performance.md).
    """
    return a if a.dtype in DTYPES else a.astype(jnp.float32)


def _weights(kernel: jax.Array, geometry: Geometry) -> jax.Array:
    """The kernel ``(*kernel_size, [1,] C)`` as ``(*kernel_size, C)``, float32 or bfloat16."""
    return _operand(kernel.reshape(geometry.kernel_size + (kernel.shape[-1],)))


def forward(
    x: jax.Array,
    kernel: jax.Array,
    geometry: Geometry,
    dtype: DTypeLike,
    *,
    bias: jax.Array | None = None,
    activation: str = "identity",
) -> jax.Array:
    """The depthwise convolution: ``x`` ``(N, *geometry.input_size, C)`` -> ``(N, *geometry.output_size, C)``.

    Args:
      x: float32 or bfloat16 input.
      kernel: ``(*geometry.kernel_size, C)`` or ``(*geometry.kernel_size, 1, C)``, any float dtype
        (used as float32).
      geometry: strides, non-negative padding and dilation, one to three spatial dimensions.
      dtype: the result's dtype, float32 or bfloat16.
      bias: optional ``(C,)``, added before the activation (in float32).
      activation: a name from :data:`ACTIVATIONS`, applied in float32 before the store.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jdw.geometry import Geometry
      >>> from jdw.kernels import cpu_depthwise
      >>> g = Geometry((5,), (3,), padding=((1, 1),))
      >>> if cpu_depthwise.AVAILABLE:
      ...     y = cpu_depthwise.forward(jnp.ones((1, 5, 2)), jnp.ones((3, 2)), g, jnp.float32)
      ...     print(y[0, :, 0])
      [2. 3. 3. 3. 2.]
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} has no fused epilogue; fused ones: {sorted(ACTIVATIONS)}")
    batch, channels = x.shape[0], x.shape[-1]
    result = jax.ShapeDtypeStruct((batch, *geometry.output_size, channels), dtype)
    w = _weights(kernel, geometry)
    b = jnp.zeros((0,), jnp.float32) if bias is None else _operand(bias.reshape(channels))
    return _call(
        "forward", result, x, w, b, geometry=geometry, batch=batch, channels=channels,
        activation=np.int64(ACTIVATIONS[activation]),
    )  # fmt: skip


def transpose(dy: jax.Array, kernel: jax.Array, geometry: Geometry, dtype: DTypeLike) -> jax.Array:
    """The adjoint of :func:`forward` in ``x``: ``(N, *geometry.output_size, C)`` -> ``(N, *geometry.input_size, C)``.

    Arguments as in :func:`forward`, with ``geometry`` the forward convolution's.
    """
    batch, channels = dy.shape[0], dy.shape[-1]
    result = jax.ShapeDtypeStruct((batch, *geometry.input_size, channels), dtype)
    w = _weights(kernel, geometry)
    return _call("transpose", result, dy, w, geometry=geometry, batch=batch, channels=channels)


def kernel_grad(x: jax.Array, dy: jax.Array, geometry: Geometry, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """The adjoint of :func:`forward` in the kernel: ``(*geometry.kernel_size, C)`` of ``dtype``.

    ``x`` and ``dy`` (the forward's input and the output's cotangent) share one dtype,
    float32 or bfloat16. The sums are float32; ``dtype`` (float32 or bfloat16) is the result's,
    rounded by the loops (so a bfloat16 kernel's gradient needs no XLA convert after the call).
    """
    batch, channels = x.shape[0], x.shape[-1]
    result = jax.ShapeDtypeStruct((*geometry.kernel_size, channels), dtype)
    return _call("kernel_grad", result, x, dy, geometry=geometry, batch=batch, channels=channels)


def causal_update(
    x: jax.Array,
    state: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    position: jax.Array | None,
    *,
    dilation: int,
    activation: str,
    dtype: DTypeLike,
) -> tuple[jax.Array, jax.Array]:
    """One decoding step of a causal depthwise 1-D convolution, the state updated in place.

    ``y[b] = act(Σ_{j<W-1} state[b, slot(j)] * kernel[j] + x[b] * kernel[W-1] + bias)`` with
    ``slot(j) = j * dilation`` for a state in order (which then shifts by one token, ``x``
    entering at the end) or ``(position[b] + j * dilation) % S`` for a ring buffer whose oldest
    token is at ``position[b]`` (which ``x`` then overwrites: one write per channel).

    The state operand is aliased to the new state, so where it is donated (or a loop carries it)
    XLA updates it in place. Under ``vmap`` every operand gets the batch dimensions in front
    (``vmap_method="broadcast_all"``), and the loops give each kernel its share of the rows.

    Args:
      x: ``(B, D)``, float32 or bfloat16.
      state: ``(B, S, D)`` of ``x``'s dtype, ``S = (W - 1) * dilation``.
      kernel: ``(W, D)`` (used as float32).
      bias: ``(D,)`` or ``None``.
      position: ``(B,)`` integers (the ring buffer's oldest slot, taken modulo ``S``), or ``None``
        (the state in order).
      dilation: spacing of the taps.
      activation: a name from :data:`ACTIVATIONS`.
      dtype: ``y``'s dtype, float32 or bfloat16.

    Returns:
      ``(y, new_state)``: ``(B, D)`` and ``state``'s shape and dtype.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} has no fused epilogue; fused ones: {sorted(ACTIVATIONS)}")
    channels = x.shape[-1]
    b = jnp.zeros((0,), jnp.float32) if bias is None else _operand(bias)
    p = jnp.zeros((0,), jnp.int32) if position is None else position.astype(jnp.int32)
    call = jax.ffi.ffi_call(
        _TARGETS["causal_update"],
        (jax.ShapeDtypeStruct(x.shape[:-1] + (channels,), dtype), jax.ShapeDtypeStruct(state.shape, state.dtype)),
        input_output_aliases={1: 1},
        vmap_method="broadcast_all",
    )
    codes = dict(dilation=np.int64(dilation), activation=np.int64(ACTIVATIONS[activation]))
    return call(x, state, _operand(kernel), b, p, **codes)
