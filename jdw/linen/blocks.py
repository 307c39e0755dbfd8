"""MobileNet building blocks for Flax Linen: conv-norm-activation, squeeze-and-excite, inverted residual.

The same blocks, options and parameter trees as :mod:`jdw.nnx.blocks`, channels-last;
blocks with batch norm or stochastic depth take ``train`` when called.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.nn import initializers
from jax.typing import ArrayLike, DTypeLike

from jdw import _layer_common as common
from jdw.functional.activations import get_activation
from jdw.functional.normalization import batch_norm_act
from jdw.linen.conv import DepthwiseConv, PointwiseConv
from jdw.typing import ActivationLike, PaddingLike

Initializer = initializers.Initializer
_HE_NORMAL = initializers.he_normal()


class ConvNormAct(nn.Module):
    """Convolution, batch norm, activation (Flax Linen); see :class:`jdw.nnx.ConvNormAct`.

    ``groups`` equal to the input channels gives a :class:`DepthwiseConv`, a 1x1 stride-1
    kernel with ``groups=1`` a :class:`PointwiseConv`, anything else ``nn.Conv``. With
    ``train=True`` the norm and activation run as :func:`jdw.functional.batch_norm_act` on
    ``nn.BatchNorm``'s variables (reverse-mode differentiation only).
    Submodules ``conv`` and ``norm``.

    Attributes:
      features: output channels.
      kernel_size: window; an int means the same size along ``num_spatial_dims`` axes.
      strides: int or one per spatial dimension.
      groups: channel groups of the convolution.
      padding: see :func:`jdw.depthwise_conv`.
      dilation: kernel dilation.
      activation: name or callable applied last; ``None`` for none.
      use_norm: whether to batch-normalise.
      use_bias: bias on the convolution; by default only when there is no norm.
      norm_momentum: momentum of the batch norm's running statistics.
      norm_epsilon: epsilon of the batch norm.
      num_spatial_dims: rank when ``kernel_size`` is an int.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      precision: passed to the convolution.
      kernel_init: initializer of the kernel.
      implementation: backend of a depthwise convolution.

    Examples:
      >>> import jax, jax.numpy as jnp, jdw
      >>> stem = jdw.linen.ConvNormAct(32, 3, strides=2, activation="relu6")
      >>> y, variables = stem.init_with_output(jax.random.key(0), jnp.ones((2, 224, 224, 3)))
      >>> y.shape, sorted(variables)
      ((2, 112, 112, 32), ['batch_stats', 'params'])
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    groups: int = 1
    padding: PaddingLike = "SAME"
    dilation: int | Sequence[int] = 1
    activation: ActivationLike = "relu"
    use_norm: bool = True
    use_bias: bool | None = None
    norm_momentum: float = 0.99
    norm_epsilon: float = 1e-3
    num_spatial_dims: int = 2
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: jax.lax.PrecisionLike = None
    kernel_init: Initializer = _HE_NORMAL
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: ArrayLike, *, train: bool = False) -> jax.Array:
        """Applies conv, [norm], [activation].

        Args:
          x: channels-last input.
          train: use batch statistics in the norm (and update ``batch_stats``).
        """
        x = jnp.asarray(x)
        kernel_size = common.kernel_size_tuple(self.kernel_size, self.num_spatial_dims, "ConvNormAct")
        in_features = common.check_input("ConvNormAct", x, len(kernel_size), "channels_last", None)
        common.check_positive_int("ConvNormAct", features=self.features, groups=self.groups)
        if in_features % self.groups or self.features % self.groups:
            raise ValueError(
                f"ConvNormAct: the input's {in_features} channels and features={self.features} "
                f"must both be divisible by groups={self.groups}"
            )
        use_bias = not self.use_norm if self.use_bias is None else self.use_bias
        params = dict(
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=self.kernel_init,
            name="conv",
        )
        kind = common.conv_kind(in_features, kernel_size, self.strides, self.groups, self.padding)
        if kind == "depthwise":
            conv = DepthwiseConv(
                kernel_size,
                depth_multiplier=self.features // in_features,
                strides=self.strides,
                padding=self.padding,
                dilation=self.dilation,
                implementation=self.implementation,
                **params,
            )
        elif kind == "pointwise":
            conv = PointwiseConv(self.features, num_spatial_dims=len(kernel_size), **params)
        else:
            conv = nn.Conv(
                self.features,
                kernel_size,
                strides=self.strides,
                padding=self.padding,
                kernel_dilation=self.dilation,
                feature_group_count=self.groups,
                **params,
            )
        y = conv(x)
        if not self.use_norm:
            return get_activation(self.activation)(y)
        norm = dict(
            momentum=self.norm_momentum, epsilon=self.norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype
        )
        if train:  # the same variables as nn.BatchNorm's, normalised by the fused function
            return _BatchNormAct(activation=self.activation, name="norm", **norm)(y)
        return get_activation(self.activation)(nn.BatchNorm(use_running_average=True, name="norm", **norm)(y))


class _BatchNormAct(nn.Module):
    """``nn.BatchNorm`` with batch statistics, then an activation, by :func:`jdw.functional.batch_norm_act`.

    Its variables are ``nn.BatchNorm``'s (``params``: ``scale``, ``bias``; ``batch_stats``:
    ``mean``, ``var``), initialised and updated as ``nn.BatchNorm`` does them.
    """

    activation: ActivationLike
    momentum: float
    epsilon: float
    dtype: DTypeLike | None
    param_dtype: DTypeLike

    @nn.compact
    def __call__(self, y: jax.Array) -> jax.Array:
        features = (y.shape[-1],)
        initializing = self.is_initializing()
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", initializers.ones, features, self.param_dtype)
        bias = self.param("bias", initializers.zeros, features, self.param_dtype)
        with jax.numpy_dtype_promotion("standard"):  # bf16 with f32 parameters gives f32, as in nn.BatchNorm
            dtype = self.dtype or jnp.result_type(y.dtype, scale.dtype, bias.dtype)
        out, mean, var = batch_norm_act(y, scale, bias, epsilon=self.epsilon, activation=self.activation, dtype=dtype)
        if not initializing:
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return out


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Flax Linen); see :class:`jdw.nnx.SqueezeExcite`.

    Attributes:
      squeeze_features: channels of the bottleneck; by default ``make_divisible(C * se_ratio, divisor)``.
      se_ratio: bottleneck ratio used when ``squeeze_features`` is not given.
      divisor: channel rounding used when ``squeeze_features`` is not given.
      activation: activation of the bottleneck.
      gate: activation producing the per-channel scale.
      num_spatial_dims: spatial rank of the input.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      precision: passed to the 1x1 convolutions.

    Examples:
      >>> import jax, jax.numpy as jnp, jdw
      >>> se = jdw.linen.SqueezeExcite(gate="hard_sigmoid")
      >>> y, variables = se.init_with_output(jax.random.key(0), jnp.ones((2, 14, 14, 96)))
      >>> variables["params"]["reduce"]["kernel"].shape, y.shape
      ((1, 1, 96, 24), (2, 14, 14, 96))
    """

    squeeze_features: int | None = None
    se_ratio: float = 0.25
    divisor: int = 8
    activation: ActivationLike = "relu"
    gate: ActivationLike = "sigmoid"
    num_spatial_dims: int = 2
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: jax.lax.PrecisionLike = None

    @nn.compact
    def __call__(self, x: ArrayLike) -> jax.Array:
        """Rescales the channels of channels-last ``x``."""
        x = jnp.asarray(x)
        channels = common.check_input("SqueezeExcite", x, self.num_spatial_dims, "channels_last", None)
        squeeze = self.squeeze_features
        if squeeze is None:
            squeeze = common.make_divisible(channels * self.se_ratio, self.divisor)
        params = dict(num_spatial_dims=self.num_spatial_dims, dtype=self.dtype, param_dtype=self.param_dtype)
        params["precision"] = self.precision
        s = common.mean_over_spatial(x, self.num_spatial_dims, "channels_last")
        s = get_activation(self.activation)(PointwiseConv(squeeze, name="reduce", **params)(s))
        s = get_activation(self.gate)(PointwiseConv(channels, name="expand", **params)(s))
        return x * s.astype(x.dtype)


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 inverted residual (Flax Linen); see :class:`jdw.nnx.InvertedResidual`.

    Submodules ``expand`` (absent when the expanded width equals the input's), ``depthwise``,
    ``se`` (with ``se_ratio``), ``project``; stochastic depth draws from the ``"dropout"`` rng.

    Attributes:
      features: output channels.
      kernel_size: depthwise window.
      strides: depthwise strides.
      expand_ratio: expanded width ``round(C_in * expand_ratio)`` unless ``expanded_features`` is given.
      expanded_features: expanded width.
      dilation: depthwise dilation.
      padding: depthwise padding (``"SAME"`` as Keras; an int pads both sides alike, as PyTorch).
      activation: activation after expand and depthwise.
      se_ratio: squeeze ratio of the expanded width; ``None`` for no squeeze-excite.
      se_features: squeeze-excite bottleneck width, given directly; implies squeeze-excite.
      se_activation: bottleneck activation of the squeeze-excite.
      se_gate: gate of the squeeze-excite.
      stochastic_depth_rate: probability of dropping the residual branch in training.
      num_spatial_dims: spatial rank when ``kernel_size`` is an int (1 for sequences, 3 for volumes).
      norm_momentum: momentum of the batch norms.
      norm_epsilon: epsilon of the batch norms.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      precision: passed to the convolutions.
      implementation: backend of the depthwise convolution.

    Examples:
      >>> import jax, jax.numpy as jnp, jdw
      >>> block = jdw.linen.InvertedResidual(24, expand_ratio=6)
      >>> y, variables = block.init_with_output(jax.random.key(0), jnp.ones((2, 56, 56, 24)))
      >>> variables["params"]["depthwise"]["conv"]["kernel"].shape, y.shape
      ((3, 3, 1, 144), (2, 56, 56, 24))
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    expand_ratio: float = 6.0
    expanded_features: int | None = None
    dilation: int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    activation: ActivationLike = "relu6"
    se_ratio: float | None = None
    se_features: int | None = None
    se_activation: ActivationLike = "relu"
    se_gate: ActivationLike = "sigmoid"
    stochastic_depth_rate: float = 0.0
    num_spatial_dims: int = 2
    norm_momentum: float = 0.99
    norm_epsilon: float = 1e-3
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: jax.lax.PrecisionLike = None
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: ArrayLike, *, train: bool = False) -> jax.Array:
        """Applies the block.

        Args:
          x: channels-last input ``(N, *spatial, C_in)``.
          train: use batch statistics and stochastic depth.
        """
        x = jnp.asarray(x)
        kernel_size = common.kernel_size_tuple(self.kernel_size, self.num_spatial_dims, "InvertedResidual")
        nd = len(kernel_size)
        in_features = common.check_input("InvertedResidual", x, nd, "channels_last", None)
        hidden = common.expanded_width(in_features, self.expand_ratio, self.expanded_features, "InvertedResidual")
        if not 0.0 <= self.stochastic_depth_rate < 1.0:
            raise ValueError(
                f"InvertedResidual: stochastic_depth_rate must be in [0, 1), got {self.stochastic_depth_rate}"
            )
        shared = dict(
            norm_momentum=self.norm_momentum,
            norm_epsilon=self.norm_epsilon,
            num_spatial_dims=nd,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
        )
        y = x
        if hidden != in_features:
            y = ConvNormAct(hidden, 1, activation=self.activation, name="expand", **shared)(y, train=train)
        y = ConvNormAct(
            hidden,
            kernel_size,
            strides=self.strides,
            groups=hidden,
            padding=self.padding,
            dilation=self.dilation,
            activation=self.activation,
            implementation=self.implementation,
            name="depthwise",
            **shared,
        )(y, train=train)
        if self.se_ratio or self.se_features:
            y = SqueezeExcite(
                self.se_features,
                se_ratio=self.se_ratio or 0.25,
                activation=self.se_activation,
                gate=self.se_gate,
                num_spatial_dims=nd,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                precision=self.precision,
                name="se",
            )(y)
        y = ConvNormAct(self.features, 1, activation=None, name="project", **shared)(y, train=train)
        if not common.residual_allowed(in_features, self.features, self.strides, nd):
            return y
        if self.stochastic_depth_rate > 0:
            y = nn.Dropout(self.stochastic_depth_rate, broadcast_dims=tuple(range(1, nd + 2)), deterministic=not train)(
                y
            )
        return x.astype(y.dtype) + y
