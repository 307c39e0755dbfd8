"""Flax Linen layers: depthwise, pointwise and depthwise-separable convolution.

The same layers as :mod:`jdw.nnx`, with Linen's conventions: the input channel count is
read from the input, the output count is ``features``, and layers with batch norm take
``train`` when called.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import dtypes
from jax.nn import initializers
from jax.typing import ArrayLike, DTypeLike

from jdw import _layer_common as common
from jdw.functional import depthwise_conv, pointwise_conv
from jdw.functional.activations import get_activation
from jdw.initializers import depthwise_kernel_init, pointwise_kernel_init
from jdw.typing import ActivationLike, DataFormat, PaddingLike, PaddingMode

Initializer = initializers.Initializer
_DEPTHWISE_INIT = depthwise_kernel_init()
_POINTWISE_INIT = pointwise_kernel_init()


class DepthwiseConv(nn.Module):
    """Depthwise convolution layer (Flax Linen): each channel filtered by its own kernel(s).

    A drop-in replacement for ``nn.Conv(C * M, kernel_size, feature_group_count=C)``:
    the parameters are named and shaped alike (``kernel``: ``(*kernel_size, 1, C * M)``,
    ``bias``: ``(C * M,)``). The options are those of :class:`jdw.nnx.DepthwiseConv`
    without ``in_features``, which comes from the input.

    Attributes:
      kernel_size: window size; an int means the same size along ``num_spatial_dims`` axes.
      depth_multiplier: output channels per input channel.
      strides: int or one per spatial dimension.
      padding: ``"SAME"``, ``"VALID"``, ``"CAUSAL"`` (1-D), an int or ``(low, high)`` pairs.
      padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
      dilation: kernel dilation.
      use_bias: whether to add a bias.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      num_spatial_dims: rank of the convolution when ``kernel_size`` is an int.
      dtype: dtype of the computation; by default the promoted dtype of input and parameters.
      param_dtype: dtype of the parameters.
      precision: passed to :func:`jdw.depthwise_conv`.
      kernel_init: initializer of the kernel (He normal with fan-in ``prod(kernel_size)``).
      bias_init: initializer of the bias.
      implementation: backend, see :func:`jdw.depthwise_conv`.
      activation: activation after the bias (name or callable), ``None`` for none; a named
        one is fused into the kernel on the ``"pallas"`` backend.

    Examples:
      >>> import jax, jax.numpy as jnp, jdw
      >>> layer = jdw.linen.DepthwiseConv(3, strides=2)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 32, 32, 16)))
      >>> variables["params"]["kernel"].shape
      (3, 3, 1, 16)
    """

    kernel_size: int | Sequence[int] = 3
    depth_multiplier: int = 1
    strides: int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    padding_mode: PaddingMode = "zeros"
    dilation: int | Sequence[int] = 1
    use_bias: bool = True
    data_format: DataFormat = "channels_last"
    num_spatial_dims: int = 2
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: jax.lax.PrecisionLike = None
    kernel_init: Initializer = _DEPTHWISE_INIT
    bias_init: Initializer = initializers.zeros
    implementation: str | None = None
    activation: ActivationLike = None

    def __post_init__(self):
        # Refuse bad options when the module is built, as the NNX layer does, not at the first call.
        kernel_size = common.kernel_size_tuple(self.kernel_size, self.num_spatial_dims, "DepthwiseConv")
        get_activation(self.activation)
        common.check_conv_options(
            "DepthwiseConv",
            kernel_size,
            strides=self.strides,
            padding=self.padding,
            padding_mode=self.padding_mode,
            dilation=self.dilation,
            data_format=self.data_format,
            implementation=self.implementation,
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies the layer to ``x`` of shape ``(*batch, *spatial, C)`` (or ``(*batch, C, *spatial)``)."""
        x = jnp.asarray(x)
        kernel_size = common.kernel_size_tuple(self.kernel_size, self.num_spatial_dims, "DepthwiseConv")
        common.check_positive_int("DepthwiseConv", depth_multiplier=self.depth_multiplier)
        channels = common.check_input("DepthwiseConv", x, len(kernel_size), self.data_format, None)
        out_features = channels * self.depth_multiplier
        kernel = self.param("kernel", self.kernel_init, (*kernel_size, 1, out_features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (out_features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        x, restore = common.with_one_batch_axis(x, len(kernel_size), self.data_format)
        y = depthwise_conv(
            x,
            kernel,
            bias,
            strides=self.strides,
            padding=self.padding,
            dilation=self.dilation,
            padding_mode=self.padding_mode,
            data_format=self.data_format,
            precision=self.precision,
            implementation=self.implementation,
            activation=self.activation,
        )
        return restore(y)


class PointwiseConv(nn.Module):
    """Pointwise (1x1) convolution layer (Flax Linen), mixing channels at every position.

    Same parameters as ``nn.Conv(features, kernel_size=(1,) * num_spatial_dims)``.

    Attributes:
      features: output channels.
      use_bias: whether to add a bias.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      num_spatial_dims: number of unit axes in front of the kernel.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      precision: passed to ``lax.dot_general``.
      kernel_init: initializer of the kernel (LeCun normal, as Flax's ``Conv``).
      bias_init: initializer of the bias.

    Examples:
      >>> import jax, jax.numpy as jnp, jdw
      >>> layer = jdw.linen.PointwiseConv(32)
      >>> y, _ = layer.init_with_output(jax.random.key(0), jnp.ones((4, 8, 8, 16)))
      >>> y.shape
      (4, 8, 8, 32)
    """

    features: int
    use_bias: bool = True
    data_format: DataFormat = "channels_last"
    num_spatial_dims: int = 2
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: jax.lax.PrecisionLike = None
    kernel_init: Initializer = _POINTWISE_INIT
    bias_init: Initializer = initializers.zeros

    @nn.compact
    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies the layer to ``x`` of shape ``(*batch, *spatial, C_in)`` (or channels first)."""
        x = jnp.asarray(x)
        common.check_positive_int("PointwiseConv", features=self.features, num_spatial_dims=self.num_spatial_dims)
        channels = common.check_input("PointwiseConv", x, self.num_spatial_dims, self.data_format, None)
        shape = (1,) * self.num_spatial_dims + (channels, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        x, restore = common.with_one_batch_axis(x, self.num_spatial_dims, self.data_format)
        return restore(pointwise_conv(x, kernel, bias, data_format=self.data_format, precision=self.precision))


class SeparableConv(nn.Module):
    """Depthwise-separable convolution layer (Flax Linen): depthwise, then pointwise.

    The options of :class:`jdw.nnx.SeparableConv`; submodules ``depthwise``, ``norm``
    (with ``intermediate_norm``) and ``pointwise``.

    Attributes:
      features: output channels.
      kernel_size: depthwise window.
      depth_multiplier: depthwise channels per input channel.
      strides: depthwise strides.
      padding: depthwise padding.
      padding_mode: depthwise padding mode.
      dilation: depthwise dilation.
      use_bias: bias on the pointwise step.
      depthwise_use_bias: bias on the depthwise step.
      intermediate_norm: batch-normalise between the two steps.
      intermediate_activation: activation between the two steps.
      activation: activation of the output.
      norm_momentum: momentum of the intermediate batch norm.
      norm_epsilon: epsilon of the intermediate batch norm.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      num_spatial_dims: rank when ``kernel_size`` is an int.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      precision: passed to both convolutions.
      depthwise_init: initializer of the depthwise kernel.
      pointwise_init: initializer of the pointwise kernel.
      bias_init: initializer of the biases.
      implementation: backend of the depthwise step.

    Examples:
      >>> import jax, jax.numpy as jnp, jdw
      >>> layer = jdw.linen.SeparableConv(64, activation="relu")
      >>> y, _ = layer.init_with_output(jax.random.key(0), jnp.ones((2, 32, 32, 16)))
      >>> y.shape
      (2, 32, 32, 64)
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    depth_multiplier: int = 1
    strides: int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    padding_mode: PaddingMode = "zeros"
    dilation: int | Sequence[int] = 1
    use_bias: bool = True
    depthwise_use_bias: bool = False
    intermediate_norm: bool = False
    intermediate_activation: ActivationLike = None
    activation: ActivationLike = None
    norm_momentum: float = 0.99
    norm_epsilon: float = 1e-3
    data_format: DataFormat = "channels_last"
    num_spatial_dims: int = 2
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: jax.lax.PrecisionLike = None
    depthwise_init: Initializer = _DEPTHWISE_INIT
    pointwise_init: Initializer = _POINTWISE_INIT
    bias_init: Initializer = initializers.zeros
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: ArrayLike, *, train: bool = False) -> jax.Array:
        """Applies depthwise, [norm], [activation], pointwise, [activation].

        Args:
          x: the input.
          train: use batch statistics in the intermediate norm (and update ``batch_stats``).
        """
        kernel_size = common.kernel_size_tuple(self.kernel_size, self.num_spatial_dims, "SeparableConv")
        y = DepthwiseConv(
            kernel_size,
            depth_multiplier=self.depth_multiplier,
            strides=self.strides,
            padding=self.padding,
            padding_mode=self.padding_mode,
            dilation=self.dilation,
            use_bias=self.depthwise_use_bias,
            data_format=self.data_format,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.depthwise_init,
            bias_init=self.bias_init,
            implementation=self.implementation,
            # Without a norm in between, the intermediate activation is the depthwise layer's own
            # (fused into the kernel on the pallas backend).
            activation=None if self.intermediate_norm else self.intermediate_activation,
            name="depthwise",
        )(x)
        if self.intermediate_norm:
            y = nn.BatchNorm(
                use_running_average=not train,
                axis=common.feature_axis(len(kernel_size), self.data_format),
                momentum=self.norm_momentum,
                epsilon=self.norm_epsilon,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="norm",
            )(y)
            y = get_activation(self.intermediate_activation)(y)
        y = PointwiseConv(
            self.features,
            use_bias=self.use_bias,
            data_format=self.data_format,
            num_spatial_dims=len(kernel_size),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.pointwise_init,
            bias_init=self.bias_init,
            name="pointwise",
        )(y)
        return get_activation(self.activation)(y)
