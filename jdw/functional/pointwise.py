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
    rhs = kernel
    if data_format == "channels_last" and kernel.shape[0] > kernel.shape[1]:
        rhs = lax.platform_dependent(kernel, cpu=_narrow_first_kernel_grad, default=lambda k: k)
    y = lax.dot_general(
        lhs,
        rhs,
        (((contracted,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if data_format == "channels_last":
        y = y.reshape(x.shape[:-1] + kernel.shape[1:])
    y = args_lib.add_bias(y, bias)
    return y if data_format == "channels_last" else jnp.moveaxis(y, -1, 1)


def _narrow_first_kernel_grad(kernel: jax.Array) -> jax.Array:
    """``kernel`` as it is, whose gradient XLA:CPU computes with the fewer channels first.

    The kernel gradient of ``(positions, C_in) x (C_in, C_out)`` is the product of the two
    ``(positions, C)`` operands over positions, ``(C_in, C_out)``. XLA:CPU runs it on Eigen,
    whose time depends on the order: with more rows than columns in the result (a projection,
    ``C_in > C_out``) it packs the wide operand slowly. On a Zen 4 (two cores, float32, one
    process, us, ``(C_in, C_out)`` first -> ``(C_out, C_in)`` then transposed): 65536 positions
    96 -> 16 7410 -> 2829, 16384 positions 96 -> 16 897 -> 314, 4096 positions 192 -> 32 796
    -> 377 and 288 -> 48 1403 -> 895; the other order was the slow one for expansions (4096
    positions 32 -> 192 349 -> 787), and 1024 positions were within 5% either way. XLA folds
    a transpose of the product back into it, so the transposes go through an optimization
    barrier; they move only the (small) kernel and its gradient. The MobileNetV2 training step
    (``examples/bench_training.py``: batch 64, 32x32, width 0.5) took 130.6 ms where it took
    134.6 (medians of nine rounds alternating in one process) and 127.5 where 131.5 (seven).
    The forward product still runs on YNNPACK, from a copy of the kernel that XLA writes out
    (``C_in x C_out`` values: a few KiB). Only on CPU (:func:`jax.lax.platform_dependent`): other
    backends' products take either order.
    """
    return lax.optimization_barrier(kernel.T).T
