"""Depthwise-separable convolution: depthwise, then pointwise."""

from __future__ import annotations

import jax
from jax.typing import ArrayLike, DTypeLike

from jdw.functional.depthwise import depthwise_conv
from jdw.functional.pointwise import pointwise_conv
from jdw.typing import DataFormat, PaddingLike, PaddingMode


def separable_conv(
    x: ArrayLike,
    depthwise_kernel: ArrayLike,
    pointwise_kernel: ArrayLike,
    *,
    depthwise_bias: ArrayLike | None = None,
    pointwise_bias: ArrayLike | None = None,
    strides: int | tuple[int, ...] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | tuple[int, ...] = 1,
    padding_mode: PaddingMode = "zeros",
    data_format: DataFormat = "channels_last",
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    implementation: str | None = None,
) -> jax.Array:
    """Depthwise-separable convolution (Keras ``SeparableConv2D``, Xception, MobileNet).

    A :func:`jdw.depthwise_conv` that filters each channel spatially, followed by a
    :func:`jdw.pointwise_conv` that mixes channels. For ``C_in`` channels, a ``k x k``
    window and ``C_out`` outputs it costs ``k*k*C_in*M + C_in*M*C_out`` weights instead of
    ``k*k*C_in*C_out``. (Not to be confused with a *spatially* separable convolution,
    ``k x 1`` then ``1 x k``.)

    Args:
      x: ``(N, *spatial, C_in)`` (or channels first, or unbatched).
      depthwise_kernel: ``(*kernel_spatial, 1, C_in * M)``.
      pointwise_kernel: ``(C_in * M, C_out)`` or ``(1, ..., 1, C_in * M, C_out)``.
      depthwise_bias: optional ``(C_in * M,)``, added between the two convolutions.
      pointwise_bias: optional ``(C_out,)``.
      strides: see :func:`jdw.depthwise_conv` (applied by the depthwise step).
      padding: see :func:`jdw.depthwise_conv`.
      dilation: see :func:`jdw.depthwise_conv`.
      padding_mode: see :func:`jdw.depthwise_conv`.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      precision: passed to both steps.
      preferred_element_type: dtype of both steps' results.
      implementation: backend of the depthwise step.

    Returns:
      ``(N, *out_spatial, C_out)``.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> x = jnp.ones((2, 32, 32, 16))
      >>> y = jdw.separable_conv(x, jnp.ones((3, 3, 1, 16)), jnp.ones((16, 64)), strides=2)
      >>> y.shape
      (2, 16, 16, 64)
    """
    y = depthwise_conv(
        x,
        depthwise_kernel,
        depthwise_bias,
        strides=strides,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        data_format=data_format,
        precision=precision,
        preferred_element_type=preferred_element_type,
        implementation=implementation,
    )
    return pointwise_conv(
        y,
        pointwise_kernel,
        pointwise_bias,
        data_format=data_format,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
