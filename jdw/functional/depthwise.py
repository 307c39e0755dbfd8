"""Depthwise convolution: each input channel filtered by its own kernel(s)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from jdw.backends import registry
from jdw.functional import _arguments as args_lib
from jdw.functional.activations import get_activation
from jdw.typing import ActivationLike, DataFormat, PaddingLike, PaddingMode


def depthwise_conv(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    activation: ActivationLike = None,
    strides: int | tuple[int, ...] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | tuple[int, ...] = 1,
    padding_mode: PaddingMode = "zeros",
    data_format: DataFormat = "channels_last",
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    implementation: str | None = None,
) -> jax.Array:
    r"""Depthwise convolution over 1, 2 or 3 spatial dimensions.

    Each input channel ``c`` is convolved (cross-correlated, as in every deep-learning
    library) with its own ``depth_multiplier`` kernels; output channel ``c * M + m``
    reads input channel ``c`` only. In 2-D, with stride 1, dilation 1 and no padding:

    .. math:: y[n, h, w, cM + m] = \sum_{i, j} x[n, h + i, w + j, c] \, k[i, j, 0, cM + m] + b[cM + m]

    Args:
      x: input of shape ``(N, *spatial, C)`` (``(N, C, *spatial)`` with
        ``data_format="channels_first"``), or the same without the batch axis.
      kernel: ``(*kernel_spatial, 1, C * M)``, the layout of lax/Flax grouped
        convolution, so a ``flax.nnx.Conv(feature_group_count=C)`` kernel loads unchanged.
        A Keras ``DepthwiseConv2D`` kernel ``(kh, kw, C, M)`` becomes this with
        ``kernel.reshape(kh, kw, 1, C * M)``.
      bias: optional ``(C * M,)`` bias added to the output.
      activation: optional activation applied after the bias: a name (``"relu"``,
        ``"relu6"``, ``"hard_swish"``, ``"silu"``, ... see :func:`jdw.functional.get_activation`)
        or a callable. The ``"pallas"`` backend fuses named ones into its kernel's epilogue
        (no extra pass over memory); elsewhere XLA fuses them with the bias add.
      strides: int or one int per spatial dimension.
      padding: ``"SAME"`` (output size ``ceil(n / stride)``), ``"VALID"``, ``"CAUSAL"``
        (1-D only: pad ``dilation * (k - 1)`` on the left), an int, or one int or
        ``(low, high)`` pair per spatial dimension.
      dilation: kernel (atrous) dilation, int or one per spatial dimension.
      padding_mode: what the padding holds: ``"zeros"``, ``"reflect"`` (mirror without
        repeating the edge), ``"replicate"`` (repeat the edge) or ``"circular"`` (wrap).
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.
      precision: passed to ``lax.conv_general_dilated`` on the ``"xla"`` path; the
        ``"taps"`` and ``"cpu"`` paths multiply elementwise at full precision of the compute dtype.
      preferred_element_type: dtype of the result (and of accumulation); by default the
        promoted dtype of ``x`` and ``kernel``. bfloat16/float16 accumulate in float32 on
        the ``"taps"`` and ``"cpu"`` paths.
      implementation: ``"xla"`` (``lax.conv_general_dilated`` with ``feature_group_count``,
        the reference), ``"taps"`` (fused tap sum with custom gradients), ``"cpu"`` (jdw's C++
        loops for XLA:CPU, fastest on CPU; the ``"taps"`` code on other platforms),
        ``"pallas"`` (hand-written kernel: Mosaic on TPU, Triton on NVIDIA GPUs, the Pallas
        interpreter elsewhere; 3-D as a sum of 2-D calls), or ``None`` to choose per platform (see
        :func:`jdw.backends.automatic_choice`).

    Returns:
      ``(N, *out_spatial, C * M)`` (or channels first / unbatched, like ``x``).

    Raises:
      ValueError: for inconsistent shapes or options; the message names the values.
      TypeError: for non-floating inputs or malformed options.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> x = jnp.ones((1, 28, 28, 3))                 # one RGB image
      >>> kernel = jnp.ones((3, 3, 1, 3)) / 9.0        # a 3x3 mean filter per channel
      >>> jdw.depthwise_conv(x, kernel, padding="VALID").shape
      (1, 26, 26, 3)

    References:
      Howard et al., *MobileNets: Efficient Convolutional Neural Networks for Mobile
      Vision Applications*, 2017. Chollet, *Xception: Deep Learning with Depthwise
      Separable Convolutions*, 2017.
    """
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    x, unbatched = args_lib.canonical_input(
        x, kernel.ndim - 2, data_format, op="depthwise_conv", kernel_shape=tuple(kernel.shape)
    )
    geometry = args_lib.check_conv_args(
        x,
        kernel,
        strides=strides,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        data_format=data_format,
    )
    if bias is not None:
        bias = jnp.asarray(bias)
    args_lib.check_bias(bias, kernel.shape[-1])
    args_lib.check_preferred_element_type(preferred_element_type, x, kernel, "depthwise_conv")
    if implementation is not None:
        registry.get(implementation)
    x, kernel = args_lib.cast_common(x, kernel)
    if padding_mode != "zeros":
        x = args_lib.apply_padding_mode(x, geometry.padding, padding_mode)
        geometry = dataclasses.replace(geometry, input_size=tuple(x.shape[1:-1]), padding=None)
    y = registry.dispatch(
        implementation,
        registry.conv_bias_act,
        x,
        kernel,
        bias,
        geometry=geometry,
        activation=activation if isinstance(activation, str) else None,
        epilogue=get_activation(activation),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return args_lib.restore_layout(y, data_format, unbatched)
