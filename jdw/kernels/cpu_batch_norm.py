"""C++ per-channel sums of batch norm for XLA:CPU (XLA FFI custom calls), used by :func:`jdw.functional.batch_norm_act`.

Two calls on a channels-last operand seen as ``(rows, C)``, float32 or bfloat16, each one pass
that returns two float32 vectors of shape ``(C,)``:

=================================  ==========================================================
:func:`sums`                       ``Σ_r x[r]`` and ``Σ_r x[r]²``: the batch statistics
:func:`grad_sums`                  ``Σ_r g[r]`` and ``Σ_r g[r] x[r]``, ``g = dy · act'(a x + b)``
=================================  ==========================================================

XLA:CPU computes each pair as two reductions, and the backward pair from a ``g`` it first
writes out, so the C++ passes read each operand once where XLA reads it two or three times
(``cpu_batch_norm.cc``; docs/guides/training.md measures the training step). The activations of
:func:`grad_sums` are those in :data:`ACTIVATIONS`. Rows are summed in float32 blocks of 64 and
the blocks in float64, shared out to XLA's intra-op thread pool, with AVX2 where the CPU has it
(:func:`instruction_set`).

The extension is built with the package (``setup.py``); where it could not be built,
:data:`AVAILABLE` is ``False`` and :func:`jdw.functional.batch_norm_act` sums with XLA.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jdw.kernels import cpu_target

try:
    from jdw.kernels import _cpu_batch_norm
except ImportError:  # built without a C++ compiler, or on a platform the extension does not support
    _cpu_batch_norm = None

#: Whether the C++ extension was built and loaded.
AVAILABLE = _cpu_batch_norm is not None

#: Data types the sums read.
DTYPES = (np.dtype(np.float32), np.dtype(jnp.bfloat16))

#: The activations whose derivative :func:`grad_sums` applies, by name, and their codes in
#: ``cpu_batch_norm.cc``.
ACTIVATIONS = {"identity": 0, "relu": 1, "relu6": 2}

_TARGETS = {name: f"jdw_batch_norm_{name}" for name in ("sums", "grad_sums")}

#: The custom calls' safety checks for :func:`jax.export.export`, as ``cpu_depthwise.EXPORT_CHECKS``.
EXPORT_CHECKS = tuple(jax.export.DisabledSafetyCheck.custom_call(target) for target in _TARGETS.values())

if AVAILABLE:
    cpu_target.check_environment()
    for _name, _capsule in _cpu_batch_norm.handlers().items():
        jax.ffi.register_ffi_target(_TARGETS[_name], _capsule, platform="cpu")


def instruction_set() -> str | None:
    """The instruction set the sums run with on this CPU, or ``None`` where the extension is not built.

    ``"avx2"`` (AVX2 and FMA) where the CPU has it, else ``"baseline"``; the environment variable
    ``JDW_CPU_INSTRUCTION_SET=baseline`` (read at import, as for
    :func:`jdw.kernels.cpu_depthwise.instruction_set`; see :mod:`jdw.kernels.cpu_target`) keeps the
    baseline.

    Examples:
      >>> from jdw.kernels import cpu_batch_norm
      >>> cpu_batch_norm.instruction_set() in ("avx2", "baseline", None)
      True
    """
    return _cpu_batch_norm.instruction_set() if AVAILABLE else None


def supports(*dtypes) -> bool:
    """Whether the extension is loaded and sums operands of these dtypes (all the same).

    Examples:
      >>> import numpy as np
      >>> from jdw.kernels import cpu_batch_norm
      >>> cpu_batch_norm.supports(np.float32) == cpu_batch_norm.AVAILABLE
      True
      >>> cpu_batch_norm.supports(np.float64)
      False
    """
    return AVAILABLE and len({np.dtype(d) for d in dtypes}) == 1 and np.dtype(dtypes[0]) in DTYPES


def _channels(x: jax.Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)


def sums(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(Σ x, Σ x²)`` over every axis of channels-last ``x`` but the last, in one pass (float32).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jdw.kernels import cpu_batch_norm
      >>> if cpu_batch_norm.AVAILABLE:
      ...     print(cpu_batch_norm.sums(jnp.arange(6.0).reshape(3, 2)))
      (Array([6., 9.], dtype=float32), Array([20., 35.], dtype=float32))
    """
    return _sums(x)


@jax.custom_jvp
def _sums(x):
    return jax.ffi.ffi_call(_TARGETS["sums"], (_channels(x), _channels(x)), vmap_method="sequential")(x)


@_sums.defjvp
def _sums_jvp(primals, tangents):  # in JAX, so that the sums can be differentiated (grad of grad)
    (x,), (dx,) = primals, tangents
    xf, dxf, axes = x.astype(jnp.float32), dx.astype(jnp.float32), _reduced(x)
    return _sums(x), (jnp.sum(dxf, axes), jnp.sum(2.0 * xf * dxf, axes))


def grad_sums(x: jax.Array, dy: jax.Array, a: jax.Array, b: jax.Array, activation: str) -> tuple[jax.Array, jax.Array]:
    """``(Σ g, Σ g x)`` over every axis but the last, ``g = dy · act'(a x + b)``, in one pass (float32).

    Args:
      x: channels-last ``(..., C)``, float32 or bfloat16.
      dy: the cotangent of ``act(a x + b)``, of ``x``'s shape and dtype.
      a: ``(C,)`` multiplier.
      b: ``(C,)`` offset.
      activation: a name in :data:`ACTIVATIONS`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jdw.kernels import cpu_batch_norm
      >>> x = jnp.array([[-1.0, 2.0], [3.0, 7.0]])
      >>> if cpu_batch_norm.AVAILABLE:
      ...     print(cpu_batch_norm.grad_sums(x, jnp.ones_like(x), jnp.ones(2), jnp.zeros(2), "relu6"))
      (Array([1., 1.], dtype=float32), Array([3., 2.], dtype=float32))
    """
    if activation not in ACTIVATIONS:
        known = sorted(ACTIVATIONS)
        raise ValueError(f"activation {activation!r} has no derivative in the C++ sums; they have {known}")
    return _grad_sums(activation, x, dy, a.astype(jnp.float32), b.astype(jnp.float32))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _grad_sums(activation, x, dy, a, b):
    call = jax.ffi.ffi_call(_TARGETS["grad_sums"], (_channels(x), _channels(x)), vmap_method="sequential")
    return call(x, dy, a, b, activation=np.int64(ACTIVATIONS[activation]))


@_grad_sums.defjvp
def _grad_sums_jvp(activation, primals, tangents):
    # act' is piecewise constant for these activations: the mask's tangent is zero almost everywhere.
    x, dy, a, b = primals
    dx, ddy, _, _ = tangents
    xf, axes = x.astype(jnp.float32), _reduced(x)
    u = xf * a.reshape((1,) * (x.ndim - 1) + a.shape) + b.reshape((1,) * (x.ndim - 1) + b.shape)
    live = {"identity": jnp.ones_like(u, bool), "relu": u > 0, "relu6": (u > 0) & (u < 6)}[activation]
    g = jnp.where(live, dy.astype(jnp.float32), 0.0)
    dg = jnp.where(live, ddy.astype(jnp.float32), 0.0)
    tangent = (jnp.sum(dg, axes), jnp.sum(dg * xf + g * dx.astype(jnp.float32), axes))
    return _grad_sums(activation, x, dy, a, b), tangent


def _reduced(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))
