"""Flax NNX layers: depthwise, pointwise and depthwise-separable convolution."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes
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
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def _optional_param(use: bool, init: Initializer, rngs: nnx.Rngs, shape, dtype, metadata) -> Any:
    if not use:
        return nnx.data(None)
    return nnx.Param(init(rngs.params(), shape, dtype), **metadata)


class DepthwiseConv(nnx.Module):
    """Depthwise convolution layer (Flax NNX): each channel filtered by its own kernel(s).

    A drop-in replacement for ``nnx.Conv(C, C * M, kernel_size, feature_group_count=C)``:
    the parameters are named and shaped alike (``kernel``: ``(*kernel_size, 1, C * M)``,
    ``bias``: ``(C * M,)``), so checkpoints load either way, and the output is the same.
    It calls :func:`jdw.depthwise_conv`, so ``implementation`` picks the backend.

    Args:
      in_features: number of input channels ``C``.
      kernel_size: window size; an int means the same size along ``num_spatial_dims`` axes.
      depth_multiplier: ``M``, output channels per input channel.
      strides: int or one per spatial dimension.
      padding: ``"SAME"``, ``"VALID"``, ``"CAUSAL"`` (1-D), an int or ``(low, high)`` pairs.
      padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
      dilation: kernel dilation, int or one per spatial dimension.
      use_bias: whether to add a bias.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      num_spatial_dims: rank of the convolution when ``kernel_size`` is an int (default 2).
      dtype: dtype of the computation; by default the promoted dtype of input and parameters.
      param_dtype: dtype of the parameters.
      precision: passed to :func:`jdw.depthwise_conv`.
      kernel_init: initializer of the kernel (default: He normal with fan-in ``prod(kernel_size)``).
      bias_init: initializer of the bias.
      implementation: backend, see :func:`jdw.depthwise_conv`.
      activation: activation after the bias (name or callable), ``None`` for none. A named
        one is fused into the kernel on the ``"pallas"`` backend, see :func:`jdw.depthwise_conv`.
      rngs: random number generators for the initializers.
      kernel_metadata: metadata of the kernel ``nnx.Param`` (for instance ``sharding_names``).
      bias_metadata: metadata of the bias ``nnx.Param``.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> layer = jdw.nnx.DepthwiseConv(16, 3, strides=2, rngs=nnx.Rngs(0))
      >>> layer.kernel.shape, layer(jnp.ones((4, 32, 32, 16))).shape
      ((3, 3, 1, 16), (4, 16, 16, 16))
    """

    def __init__(
        self,
        in_features: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        depth_multiplier: int = 1,
        strides: int | Sequence[int] = 1,
        padding: PaddingLike = "SAME",
        padding_mode: PaddingMode = "zeros",
        dilation: int | Sequence[int] = 1,
        use_bias: bool = True,
        data_format: DataFormat = "channels_last",
        num_spatial_dims: int = 2,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        kernel_init: Initializer = _DEPTHWISE_INIT,
        bias_init: Initializer = initializers.zeros,
        implementation: str | None = None,
        activation: ActivationLike = None,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        self.kernel_size = common.kernel_size_tuple(kernel_size, num_spatial_dims, "DepthwiseConv")
        get_activation(activation)  # fail early on a bad name
        common.check_conv_options(
            "DepthwiseConv",
            self.kernel_size,
            strides=strides,
            padding=padding,
            padding_mode=padding_mode,
            dilation=dilation,
            data_format=data_format,
            implementation=implementation,
        )
        common.check_positive_int("DepthwiseConv", in_features=in_features, depth_multiplier=depth_multiplier)
        out_features = in_features * depth_multiplier
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (*self.kernel_size, 1, out_features), param_dtype), **kernel_metadata
        )
        self.bias = _optional_param(use_bias, bias_init, rngs, (out_features,), param_dtype, bias_metadata)
        self.in_features = in_features
        self.out_features = out_features
        self.depth_multiplier = depth_multiplier
        self.strides = strides
        self.padding = padding
        self.padding_mode = padding_mode
        self.dilation = dilation
        self.use_bias = use_bias
        self.data_format = data_format
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.implementation = implementation
        self.activation = activation

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies the layer to ``x`` of shape ``(*batch, *spatial, C)`` (or ``(*batch, C, *spatial)``)."""
        x = jnp.asarray(x)
        num_spatial = len(self.kernel_size)
        common.check_input("DepthwiseConv", x, num_spatial, self.data_format, self.in_features)
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = dtypes.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
        x, restore = common.with_one_batch_axis(x, num_spatial, self.data_format)
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


class PointwiseConv(nnx.Module):
    """Pointwise (1x1) convolution layer (Flax NNX), mixing channels at every position.

    Same parameters as ``nnx.Conv(C_in, C_out, kernel_size=(1,) * num_spatial_dims)``
    (``kernel``: ``(1, ..., 1, C_in, C_out)``, ``bias``: ``(C_out,)``), computed as one
    matrix multiply by :func:`jdw.pointwise_conv`.

    Args:
      in_features: input channels.
      out_features: output channels.
      use_bias: whether to add a bias.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      num_spatial_dims: number of unit axes in front of the kernel, as Flax's ``Conv`` stores them.
      dtype: dtype of the computation; by default the promoted dtype of input and parameters.
      param_dtype: dtype of the parameters.
      precision: passed to ``lax.dot_general``.
      kernel_init: initializer of the kernel (default: LeCun normal, as Flax's ``Conv``).
      bias_init: initializer of the bias.
      rngs: random number generators for the initializers.
      kernel_metadata: metadata of the kernel ``nnx.Param``.
      bias_metadata: metadata of the bias ``nnx.Param``.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> layer = jdw.nnx.PointwiseConv(16, 32, rngs=nnx.Rngs(0))
      >>> layer.kernel.shape, layer(jnp.ones((4, 8, 8, 16))).shape
      ((1, 1, 16, 32), (4, 8, 8, 32))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        data_format: DataFormat = "channels_last",
        num_spatial_dims: int = 2,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        kernel_init: Initializer = _POINTWISE_INIT,
        bias_init: Initializer = initializers.zeros,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        common.check_positive_int(
            "PointwiseConv", in_features=in_features, out_features=out_features, num_spatial_dims=num_spatial_dims
        )
        shape = (1,) * num_spatial_dims + (in_features, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype), **kernel_metadata)
        self.bias = _optional_param(use_bias, bias_init, rngs, (out_features,), param_dtype, bias_metadata)
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.data_format = data_format
        self.num_spatial_dims = num_spatial_dims
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies the layer to ``x`` of shape ``(*batch, *spatial, C_in)`` (or channels first)."""
        x = jnp.asarray(x)
        common.check_input("PointwiseConv", x, self.num_spatial_dims, self.data_format, self.in_features)
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = dtypes.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
        x, restore = common.with_one_batch_axis(x, self.num_spatial_dims, self.data_format)
        y = pointwise_conv(x, kernel, bias, data_format=self.data_format, precision=self.precision)
        return restore(y)


class SeparableConv(nnx.Module):
    """Depthwise-separable convolution layer (Flax NNX): depthwise, then pointwise.

    Keras ``SeparableConv2D`` with the same options (``depth_multiplier``, a bias on the
    pointwise step only by default, an optional final ``activation``), plus what
    MobileNetV1 puts between the two steps: ``intermediate_norm`` (batch norm) and
    ``intermediate_activation``. Submodules: ``depthwise`` (:class:`DepthwiseConv`),
    ``norm`` (``nnx.BatchNorm`` or ``None``), ``pointwise`` (:class:`PointwiseConv`).

    Args:
      in_features: input channels ``C_in``.
      out_features: output channels ``C_out``.
      kernel_size: depthwise window; an int means the same size along ``num_spatial_dims`` axes.
      depth_multiplier: depthwise channels per input channel.
      strides: depthwise strides.
      padding: depthwise padding, see :func:`jdw.depthwise_conv`.
      padding_mode: depthwise padding mode.
      dilation: depthwise dilation.
      use_bias: bias on the pointwise step.
      depthwise_use_bias: bias on the depthwise step (pointless before a batch norm).
      intermediate_norm: batch-normalise between the two steps.
      intermediate_activation: activation between the two steps (name or callable).
      activation: activation of the output (name or callable), ``None`` for none.
      norm_momentum: momentum of the intermediate batch norm's running statistics.
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
      rngs: random number generators for the initializers.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> layer = jdw.nnx.SeparableConv(16, 64, 3, activation="relu", rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 32, 32, 16))).shape
      (2, 32, 32, 64)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        depth_multiplier: int = 1,
        strides: int | Sequence[int] = 1,
        padding: PaddingLike = "SAME",
        padding_mode: PaddingMode = "zeros",
        dilation: int | Sequence[int] = 1,
        use_bias: bool = True,
        depthwise_use_bias: bool = False,
        intermediate_norm: bool = False,
        intermediate_activation: ActivationLike = None,
        activation: ActivationLike = None,
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        data_format: DataFormat = "channels_last",
        num_spatial_dims: int = 2,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        depthwise_init: Initializer = _DEPTHWISE_INIT,
        pointwise_init: Initializer = _POINTWISE_INIT,
        bias_init: Initializer = initializers.zeros,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        kernel_size = common.kernel_size_tuple(kernel_size, num_spatial_dims, "SeparableConv")
        get_activation(intermediate_activation), get_activation(activation)  # fail early on a bad name
        self.depthwise = DepthwiseConv(
            in_features,
            kernel_size,
            depth_multiplier=depth_multiplier,
            strides=strides,
            padding=padding,
            padding_mode=padding_mode,
            dilation=dilation,
            use_bias=depthwise_use_bias,
            data_format=data_format,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=depthwise_init,
            bias_init=bias_init,
            implementation=implementation,
            # Without a norm in between, the intermediate activation is the depthwise layer's own
            # (fused into the kernel on the pallas backend).
            activation=None if intermediate_norm else intermediate_activation,
            rngs=rngs,
        )
        middle = in_features * depth_multiplier
        self.norm = (
            nnx.BatchNorm(
                middle,
                axis=common.feature_axis(len(kernel_size), data_format),
                momentum=norm_momentum,
                epsilon=norm_epsilon,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            if intermediate_norm
            else None
        )
        self.pointwise = PointwiseConv(
            middle,
            out_features,
            use_bias=use_bias,
            data_format=data_format,
            num_spatial_dims=len(kernel_size),
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=pointwise_init,
            bias_init=bias_init,
            rngs=rngs,
        )
        self.intermediate_activation = intermediate_activation
        self.activation = activation

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies depthwise, [norm], [activation], pointwise, [activation]."""
        y = self.depthwise(x)  # with the intermediate activation when there is no norm
        if self.norm is not None:
            y = get_activation(self.intermediate_activation)(self.norm(y))
        return get_activation(self.activation)(self.pointwise(y))
