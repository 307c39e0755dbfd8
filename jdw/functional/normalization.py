"""Batch norm with batch statistics, fused with its activation, and a hand-written backward pass.

MobileNets put a batch norm and an activation after every convolution. Differentiated op by op
(as ``flax.nnx.BatchNorm`` followed by ``jax.nn.relu6`` is), the pair costs XLA:CPU about twice
the passes over the activation that the backward pass needs: the gradient flows separately through
the normalisation, the mean and the variance, and each path is its own elementwise pass and
reduction. :func:`batch_norm_act` gives the same values and gradients with a custom VJP that reads
the input and the cotangent twice each: once for the two per-channel sums, once for the input's
gradient (docs/guides/training.md measures it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from jdw.functional.activations import get_activation
from jdw.kernels import cpu_batch_norm
from jdw.typing import ActivationLike


def batch_norm_act(
    x: ArrayLike,
    scale: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    *,
    epsilon: float = 1e-5,
    activation: ActivationLike = None,
    dtype: DTypeLike | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batch norm over every axis but the last, with the batch's statistics, then ``activation``.

    ``activation(scale * (x - mean) / sqrt(var + epsilon) + bias)``, where ``mean`` and ``var``
    (the biased variance, ``E[x²] - E[x]²`` as Flax's default ``use_fast_variance``) are taken per
    channel over the batch and spatial axes of channels-last ``x``: the training-mode forward pass
    of ``flax.nnx.BatchNorm`` followed by the activation, in one function whose reverse-mode
    derivative is written out (two passes over ``x`` and the cotangent) rather than traced through
    the statistics. Statistics and arithmetic are float32 for inputs of 16 or 32 bits, float64 for
    float64 inputs.

    Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) is not defined for it; use Flax's
    ``BatchNorm`` where it is needed.

    Args:
      x: ``(..., C)``, channels last, at least two axes.
      scale: ``(C,)`` multiplier (``None`` for ones).
      bias: ``(C,)`` offset (``None`` for zeros).
      epsilon: added to the variance.
      activation: a name from :data:`jdw.functional.activations.ACTIVATIONS`, a callable applied
        elementwise, or ``None`` for none.
      dtype: dtype of the result; by default that of ``x``, ``scale`` and ``bias`` promoted
        together, as Flax's ``BatchNorm`` computes it.

    Returns:
      ``(y, mean, var)``: the result, shaped as ``x``, and the batch's mean and variance of shape
      ``(C,)`` (float32, or float64 for float64 ``x``), for the running averages.

    Raises:
      ValueError: for ``x`` of fewer than two axes, or ``scale``/``bias`` not of shape ``(C,)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jdw.functional import batch_norm_act
      >>> x = jnp.arange(24.0).reshape(2, 3, 4)
      >>> y, mean, var = batch_norm_act(x, jnp.ones(4), jnp.zeros(4), activation="relu6")
      >>> y.shape, mean
      ((2, 3, 4), Array([10., 11., 12., 13.], dtype=float32))
      >>> grad = jax.grad(lambda x: batch_norm_act(x, activation="relu")[0].sum())(x)
      >>> grad.shape
      (2, 3, 4)
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"batch_norm_act: x must have a batch axis and a channel axis, got shape {x.shape}")
    channels = x.shape[-1]
    operands = {}
    for name, value in (("scale", scale), ("bias", bias)):
        if value is not None:
            value = jnp.asarray(value)
            if value.shape != (channels,):
                raise ValueError(
                    f"batch_norm_act: {name} must have shape ({channels},) for x of shape {x.shape}, got {value.shape}"
                )
        operands[name] = value
    scale, bias = operands["scale"], operands["bias"]
    if dtype is None:
        with jax.numpy_dtype_promotion("standard"):  # bf16 with f32 parameters gives f32, as in Flax
            dtype = jnp.result_type(*(v.dtype for v in (x, scale, bias) if v is not None))
    scale = jnp.ones((channels,), jnp.float32) if scale is None else scale
    bias = jnp.zeros((channels,), jnp.float32) if bias is None else bias
    return _batch_norm_act(x, scale, bias, float(epsilon), get_activation(activation), jnp.dtype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm_act(x, scale, bias, epsilon, activation, dtype):
    return _forward(x, scale, bias, epsilon, activation, dtype)[0]


def _forward(x, scale, bias, epsilon, activation, dtype):
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    xf = x.astype(_compute_dtype(x))

    def xla_sums(x):
        return jnp.sum(xf, axes), jnp.sum(xf * xf, axes)

    if cpu_batch_norm.supports(x.dtype):  # one pass where XLA:CPU makes two
        x_sum, x2_sum = jax.lax.platform_dependent(x, cpu=cpu_batch_norm.sums, default=xla_sums)
    else:
        x_sum, x2_sum = xla_sums(x)
    mean = x_sum / count
    var = jnp.maximum(x2_sum / count - mean * mean, 0.0)
    rstd = jax.lax.rsqrt(var + epsilon)
    a = scale.astype(xf.dtype) * rstd  # y = activation(a x + b)
    b = bias.astype(xf.dtype) - mean * a
    y = activation(xf * _per_channel(a, x) + _per_channel(b, x)).astype(dtype)
    return (y, mean, var), (x, scale, bias, a, b, mean, rstd)


def _backward(epsilon, activation, dtype, residuals, cotangents):
    del epsilon, dtype
    x, scale, bias, a, b, mean, rstd = residuals
    dy, dmean, dvar = cotangents
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    xf = x.astype(_compute_dtype(x))
    a_, mean_ = _per_channel(a, x), _per_channel(mean, x)
    _, activation_vjp = jax.vjp(activation, xf * a_ + _per_channel(b, x))
    (g,) = activation_vjp(dy.astype(xf.dtype))  # the cotangent before the activation

    # Pass one: the two per-channel sums. sum(g * xhat) = rstd * (sum(g x) - mean sum(g)).
    def xla_sums(x, dy):
        return jnp.sum(g, axes), jnp.sum(g * xf, axes)

    name = _CPU_DERIVATIVES.get(activation)
    if name is not None and cpu_batch_norm.supports(x.dtype, dy.dtype):  # one pass, g not written out
        cpu_sums = functools.partial(cpu_batch_norm.grad_sums, a=a, b=b, activation=name)
        g_sum, gx_sum = jax.lax.platform_dependent(x, dy, cpu=cpu_sums, default=xla_sums)
    else:
        g_sum, gx_sum = xla_sums(x, dy)
    g_xhat = rstd * (gx_sum - mean * g_sum)
    # Pass two: dx = a (g - mean(g) - xhat mean(g xhat)), plus the statistics' own cotangents.
    centred = xf - mean_
    dx = a_ * (g - (_per_channel(g_sum, x) + centred * _per_channel(rstd * g_xhat, x)) / count)
    dx = dx + (_per_channel(dmean, x) + centred * _per_channel(2.0 * dvar, x)) / count
    return dx.astype(x.dtype), g_xhat.astype(scale.dtype), g_sum.astype(bias.dtype)


# The activations whose derivative the C++ backward sums apply, by function.
_CPU_DERIVATIVES = {get_activation(name): name for name in cpu_batch_norm.ACTIVATIONS}


def _compute_dtype(x):
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def _per_channel(v, x):
    return v.reshape((1,) * (x.ndim - 1) + v.shape)


_batch_norm_act.defvjp(_forward, _backward)
