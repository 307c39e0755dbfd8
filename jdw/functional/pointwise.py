"""Pointwise (1x1) convolution: a contraction over the channel axis."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike, DTypeLike

from jdw.functional import _arguments as args_lib
from jdw.typing import DataFormat


def pointwise_conv(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    data_format: DataFormat = "channels_last",
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
) -> jax.Array:
    """Pointwise (1x1) convolution, computed as a matrix multiply over channels.

    It mixes channels at every position independently; after a depthwise convolution
    it completes a depthwise-separable convolution (see :func:`jdw.separable_conv`).

    Args:
      x: ``(..., C_in)`` for ``data_format="channels_last"`` (any number of leading
        batch/spatial axes), or ``(N, C_in, *spatial)`` for ``"channels_first"``.
      kernel: ``(C_in, C_out)``, or with leading unit spatial axes
        ``(1, ..., 1, C_in, C_out)`` as ``flax.nnx.Conv(kernel_size=1)`` and Keras store it.
      bias: optional ``(C_out,)``.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      precision: passed to ``lax.dot_general``.
      preferred_element_type: dtype of the accumulation and result.

    Returns:
      ``x`` with its channel axis replaced by ``C_out``.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> x = jnp.ones((2, 8, 8, 16))
      >>> jdw.pointwise_conv(x, jnp.ones((16, 32))).shape
      (2, 8, 8, 32)
    """
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    args_lib.check_choice(data_format, args_lib.DATA_FORMATS, "data_format")
    args_lib.check_floating("x", x)
    args_lib.check_floating("kernel", kernel)
    if kernel.ndim < 2 or any(d != 1 for d in kernel.shape[:-2]):
        raise ValueError(
            f"pointwise_conv: kernel must have shape (C_in, C_out) or (1, ..., 1, C_in, C_out), "
            f"got kernel.shape={tuple(kernel.shape)}"
        )
    kernel = kernel.reshape(kernel.shape[-2:])
    channel_axis = x.ndim - 1 if data_format == "channels_last" else 1
    if x.ndim < 2 and data_format == "channels_first":
        raise ValueError(f"pointwise_conv: channels_first input needs rank >= 2, got x.shape={tuple(x.shape)}")
    if x.ndim < 1 or x.shape[channel_axis] != kernel.shape[0]:
        raise ValueError(
            f"pointwise_conv: kernel expects {kernel.shape[0]} input channels but x has "
            f"{x.shape[channel_axis] if x.ndim else 'no'} (x.shape={tuple(x.shape)}, {data_format})"
        )
    if bias is not None:
        bias = jnp.asarray(bias)
    args_lib.check_preferred_element_type(preferred_element_type, x, kernel, "pointwise_conv")
    args_lib.check_bias(bias, kernel.shape[1])
    x, kernel = args_lib.cast_common(x, kernel)
    lhs, contracted = x, channel_axis
    if data_format == "channels_last":
        # One (positions, C_in) x (C_in, C_out) product: its kernel gradient is then a plain product with
        # a transposed operand. Contracting the N-D activation instead made XLA:CPU first write it
        # transposed to [C, N*H*W] (a fifth of a MobileNetV2 training step on CPU).
        lhs, contracted = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]), 1
    y = lax.dot_general(
        lhs,
        kernel,
        (((contracted,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if data_format == "channels_last":
        y = y.reshape(x.shape[:-1] + kernel.shape[1:])
    y = args_lib.add_bias(y, bias)
    return y if data_format == "channels_last" else jnp.moveaxis(y, -1, 1)
