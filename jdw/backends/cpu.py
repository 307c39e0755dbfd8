"""The ``"cpu"`` backend: depthwise convolution in jdw's own C++ loops for XLA:CPU.

The forward convolution, its adjoint in the input and its adjoint in the kernel are XLA FFI
custom calls (:mod:`jdw.kernels.cpu_depthwise`), wrapped as the primitives of
:mod:`jdw.backends.primitives`, so every transformation (``grad``, ``jvp``, ``hessian``,
``vmap``) runs on them. Each reads its operands once: on the kernel gradient, where XLA's
fused tap sums make one pass over memory per tap, that is several times faster (see the
performance guide).

The decoding step of :func:`jdw.causal_conv1d_update` (one token, on a state in order or a ring
buffer) is a fourth custom call, whose state operand is aliased to the new state: donated or
carried by a loop, the state is updated in place (:func:`causal_update`).

What the loops do not take runs on ``"taps"``, inside the same primitives: a channel
multiplier above 1, more than three spatial dimensions, and data that is not float32 or
bfloat16 (float16, float64). Packed sequences (:func:`jdw.causal_conv1d` with
``segment_ids``) use ``"taps"``'s segment tap sum.

The custom calls exist for XLA:CPU only. Lowered for a GPU or TPU, the same primitives run
``"taps"``'s code (so ``implementation="cpu"`` computes the same numbers everywhere), and
``implementation=None`` picks ``"cpu"`` only for the CPU branch of its per-platform choice.
:func:`jax.export.export` for CPU needs ``disabled_checks=jdw.kernels.cpu_depthwise.EXPORT_CHECKS``
(jdw's custom calls carry no compatibility guarantee from JAX).

This module is imported (and the backend registered) only where the extension was built
(:data:`jdw.kernels.cpu_depthwise.AVAILABLE`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jdw.backends import primitives, registry, taps
from jdw.functional.activations import ACTIVATIONS
from jdw.geometry import Geometry
from jdw.kernels import cpu_depthwise


def _served(static: taps._Static, *dtypes) -> bool:
    return static.multiplier == 1 and cpu_depthwise.supports(static.geometry, *dtypes)


def _forward_map(x, kernel, *, static: taps._Static, dtype) -> jax.Array:
    if not _served(static, x.dtype, kernel.dtype, dtype):
        return taps.OPS.forward(x, kernel, static=static, dtype=dtype)
    return cpu_depthwise.forward(x, kernel, static.geometry, dtype)


def _fused_map(x, kernel, bias, *, static: taps._Static, dtype, activation: str) -> jax.Array:
    if not _served(static, x.dtype, kernel.dtype, dtype):
        return primitives.composed_fused(
            taps.OPS, EPILOGUES, x, kernel, bias, static=static, dtype=dtype, activation=activation
        )
    return cpu_depthwise.forward(x, kernel, static.geometry, dtype, bias=bias, activation=activation)


def _transpose_map(dy, kernel, *, static: taps._Static, dtype) -> jax.Array:
    if not _served(static, dy.dtype, kernel.dtype, dtype):
        return taps.OPS.transpose(dy, kernel, static=static, dtype=dtype)
    return cpu_depthwise.transpose(dy, kernel, static.geometry, dtype)


def _kernel_grad_map(x, dy, *, static: taps._Static, dtype) -> jax.Array:
    if x.dtype != dy.dtype or not _served(static, x.dtype):
        return taps.OPS.kernel_grad(x, dy, static=static, dtype=dtype)
    out = dtype if jnp.dtype(dtype) in cpu_depthwise.DTYPES else jnp.float32
    grad = cpu_depthwise.kernel_grad(x, dy, static.geometry, out)
    return jnp.expand_dims(grad, -2).astype(dtype)


# The activations the forward loop applies with the bias before it stores (their derivatives give the
# fused primitive's tangent).
EPILOGUES = {name: ACTIVATIONS[name] for name in cpu_depthwise.ACTIVATIONS}

# Each map's derivatives are the others (jdw.backends.primitives): gradients of any order and
# forward-mode derivatives all run on the C++ loops.
# Lowered for another platform than the CPU, the same primitives run "taps"'s maps.
OPS = primitives.LinearOps(
    "cpu",
    forward=_forward_map,
    transpose=_transpose_map,
    kernel_grad=_kernel_grad_map,
    fused=_fused_map,
    epilogues=EPILOGUES,
    platform="cpu",
    elsewhere=taps.OPS,
)


def conv_bias_act(
    x, kernel, bias, geometry: Geometry, *, activation, precision=None, preferred_element_type=None
) -> jax.Array:
    """The convolution with the bias (``None``: none) and the activation ``activation`` applied before the store."""
    del precision
    activation = activation or "identity"
    if bias is None and activation == "identity":  # a linear primitive, which transposes
        return taps.conv(x, kernel, geometry, preferred_element_type=preferred_element_type, ops=OPS)
    static = taps.static_of(x, kernel, geometry, preferred_element_type)
    bias = jnp.zeros(kernel.shape[-1:], x.dtype) if bias is None else bias
    return primitives.conv_bias_act(x, kernel, bias, ops=OPS, static=static, dtype=static.dtype, activation=activation)


def _ffi_update(x, state, kernel, bias, position, *, dilation, activation, out_dtype):
    y, new_state = cpu_depthwise.causal_update(
        x[:, 0], state, kernel[:, 0], bias, position, dilation=dilation, activation=activation, dtype=out_dtype
    )
    return y[:, None], new_state


def causal_update(x, state, kernel, bias, position, *, dilation, activation, out_dtype, fallback):
    """:func:`jdw.causal_conv1d_update` in one C++ loop on XLA:CPU, the state updated in place.

    It serves one token of float32 or bfloat16 (state of the same dtype) with channel multiplier
    1 and a fused activation; the rest, derivatives (forward mode, hence reverse mode) and other
    platforms than the CPU run ``fallback``, the jnp computation.
    """
    activation = activation or "identity"
    served = (
        x.shape[1] == 1
        and kernel.shape[-1] == x.shape[-1]
        and x.dtype == state.dtype
        and all(jnp.dtype(t) in cpu_depthwise.DTYPES for t in (x.dtype, out_dtype))
        and activation in cpu_depthwise.ACTIVATIONS
    )
    if not served:
        return fallback(x, state, kernel, bias, position)
    step = functools.partial(_ffi_update, dilation=dilation, activation=activation, out_dtype=out_dtype)

    @jax.custom_jvp
    def update(x, state, kernel, bias, position):
        return jax.lax.platform_dependent(x, state, kernel, bias, position, cpu=step, default=fallback)

    @update.defjvp
    def _(primals, tangents):
        return jax.jvp(fallback, primals, tangents)

    return update(x, state, kernel, bias, position)


BACKEND = registry.register(
    dataclasses.replace(
        taps.BACKEND,
        name="cpu",
        conv=functools.partial(taps.conv, ops=OPS),
        conv_transpose=functools.partial(taps.conv_transpose, ops=OPS),
        conv_bias_act=conv_bias_act,
        fused_activations=frozenset(EPILOGUES),
        causal_update=causal_update,
        description="jdw's C++ loops for XLA:CPU (FFI custom calls), each reading its operands once",
    )
)
