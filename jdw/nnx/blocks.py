"""MobileNet building blocks for Flax NNX: conv-norm-activation, squeeze-and-excite, inverted residual.

The blocks are channels-last, as Flax's own layers are.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.nn import initializers
from jax.typing import ArrayLike, DTypeLike

from jdw import _layer_common as common
from jdw.functional.activations import get_activation
from jdw.functional.normalization import batch_norm_act
from jdw.nnx.conv import DepthwiseConv, PointwiseConv
from jdw.typing import ActivationLike, PaddingLike

Initializer = initializers.Initializer
_HE_NORMAL = initializers.he_normal()


class ConvNormAct(nnx.Module):
    """Convolution, batch norm, activation: the unit MobileNets are built from.

    ``groups`` chooses the convolution, as in torchvision's ``Conv2dNormActivation``:
    ``groups == in_features`` gives a :class:`DepthwiseConv` (multiplier
    ``out_features // in_features``, on jdw's fast paths); a 1x1 stride-1 kernel with
    ``groups=1`` a :class:`PointwiseConv`; anything else Flax's ``nnx.Conv`` with
    ``feature_group_count=groups``. Submodules: ``conv`` and ``norm`` (``None`` without norm).

    In training mode (batch statistics) the norm and the activation run as
    :func:`jdw.functional.batch_norm_act`, with ``norm``'s parameters and running averages: the
    same values and gradients as ``norm`` then the activation, with fewer passes over the
    activations in the backward pass. Its derivative is reverse-mode only: for ``jax.jvp`` through
    a training-mode block, set ``norm.use_fast_variance = False`` (Flax's own batch norm then runs).

    Args:
      in_features: input channels.
      out_features: output channels.
      kernel_size: window; an int means the same size along ``num_spatial_dims`` axes.
      strides: int or one per spatial dimension.
      groups: channel groups of the convolution (see above).
      padding: see :func:`jdw.depthwise_conv`.
      dilation: kernel dilation.
      activation: name or callable applied last; ``None`` for none (a linear bottleneck).
      use_norm: whether to batch-normalise.
      use_bias: bias on the convolution; by default only when there is no norm.
      norm_momentum: momentum of the batch norm's running statistics.
      norm_epsilon: epsilon of the batch norm.
      num_spatial_dims: rank when ``kernel_size`` is an int.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      precision: passed to the convolution.
      kernel_init: initializer of the kernel (default He normal over the true fan-in).
      implementation: backend of a depthwise convolution.
      rngs: random number generators for the initializers.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> stem = jdw.nnx.ConvNormAct(3, 32, 3, strides=2, activation="relu6", rngs=nnx.Rngs(0))
      >>> stem(jnp.ones((2, 224, 224, 3))).shape
      (2, 112, 112, 32)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        strides: int | Sequence[int] = 1,
        groups: int = 1,
        padding: PaddingLike = "SAME",
        dilation: int | Sequence[int] = 1,
        activation: ActivationLike = "relu",
        use_norm: bool = True,
        use_bias: bool | None = None,
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        num_spatial_dims: int = 2,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        kernel_init: Initializer = _HE_NORMAL,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        kernel_size = common.kernel_size_tuple(kernel_size, num_spatial_dims, "ConvNormAct")
        common.check_positive_int("ConvNormAct", in_features=in_features, out_features=out_features, groups=groups)
        if in_features % groups or out_features % groups:
            raise ValueError(
                f"ConvNormAct: in_features={in_features} and out_features={out_features} "
                f"must both be divisible by groups={groups}"
            )
        get_activation(activation)
        use_bias = not use_norm if use_bias is None else use_bias
        nd = len(kernel_size)
        self.kind = common.conv_kind(in_features, kernel_size, strides, groups, padding)
        params = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, use_bias=use_bias, rngs=rngs)
        if self.kind == "depthwise":
            self.conv = DepthwiseConv(
                in_features,
                kernel_size,
                depth_multiplier=out_features // in_features,
                strides=strides,
                padding=padding,
                dilation=dilation,
                kernel_init=kernel_init,
                implementation=implementation,
                **params,
            )
        elif self.kind == "pointwise":
            self.conv = PointwiseConv(in_features, out_features, num_spatial_dims=nd, kernel_init=kernel_init, **params)
        else:
            self.conv = nnx.Conv(
                in_features,
                out_features,
                kernel_size,
                strides=strides,
                padding=padding,
                kernel_dilation=dilation,
                feature_group_count=groups,
                kernel_init=kernel_init,
                **params,
            )
        self.norm = (
            nnx.BatchNorm(
                out_features,
                momentum=norm_momentum,
                epsilon=norm_epsilon,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            if use_norm
            else None
        )
        self.activation = activation
        self.in_features = in_features
        self.out_features = out_features

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies conv, [norm], [activation] to channels-last ``x``."""
        x = jnp.asarray(x)
        if self.kind == "standard":  # nnx.Conv's own message would not name in_features
            common.check_input("ConvNormAct", x, len(self.conv.kernel_size), "channels_last", self.in_features)
        y = self.conv(x)
        if self.norm is None:
            return get_activation(self.activation)(y)
        return _norm_act(self.norm, y, self.activation)


def _norm_act(norm: nnx.BatchNorm, y: jax.Array, activation: ActivationLike) -> jax.Array:
    """``activation(norm(y))``; with batch statistics, by the fused :func:`jdw.functional.batch_norm_act`.

    It updates ``norm``'s running averages as ``nnx.BatchNorm`` does. Options the fused function
    does not cover (statistics across devices by ``axis_name``, a channel axis other than the last,
    Flax's two-pass variance) and running averages take ``norm`` itself.
    """
    fused = (
        norm.use_running_average is False
        and norm.axis in (-1, y.ndim - 1)
        and norm.axis_name is None
        and norm.use_fast_variance
    )
    if not fused:
        return get_activation(activation)(norm(y))
    scale = norm.scale[...] if norm.scale is not None else None
    bias = norm.bias[...] if norm.bias is not None else None
    operands = (y, norm.mean[...], scale, bias)  # promoted as nnx.BatchNorm promotes them
    with jax.numpy_dtype_promotion("standard"):
        dtype = norm.dtype or jnp.result_type(*(v.dtype for v in operands if v is not None))
    out, mean, var = batch_norm_act(y, scale, bias, epsilon=norm.epsilon, activation=activation, dtype=dtype)
    momentum = norm.momentum
    norm.mean[...] = jax.lax.stop_gradient(momentum * norm.mean[...] + (1 - momentum) * mean)
    norm.var[...] = jax.lax.stop_gradient(momentum * norm.var[...] + (1 - momentum) * var)
    return out


class SqueezeExcite(nnx.Module):
    """Squeeze-and-excitation: rescale channels by a gate computed from their global average.

    ``x * gate(expand(activation(reduce(mean(x)))))`` with 1x1 convolutions ``reduce``
    (``C -> squeeze_features``) and ``expand`` (back to ``C``), both with bias, as in
    MobileNetV3 (gate ``"hard_sigmoid"``) and EfficientNet (gate ``"sigmoid"``).

    Args:
      in_features: channels ``C``.
      squeeze_features: channels of the bottleneck; by default ``make_divisible(C * se_ratio, divisor)``.
      se_ratio: bottleneck ratio used when ``squeeze_features`` is not given.
      divisor: channel rounding used when ``squeeze_features`` is not given.
      activation: activation of the bottleneck.
      gate: activation producing the per-channel scale.
      num_spatial_dims: spatial rank of the input.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      precision: passed to the 1x1 convolutions.
      rngs: random number generators for the initializers.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> se = jdw.nnx.SqueezeExcite(96, gate="hard_sigmoid", rngs=nnx.Rngs(0))
      >>> se.reduce.kernel.shape, se(jnp.ones((2, 14, 14, 96))).shape
      ((1, 1, 96, 24), (2, 14, 14, 96))
    """

    def __init__(
        self,
        in_features: int,
        squeeze_features: int | None = None,
        *,
        se_ratio: float = 0.25,
        divisor: int = 8,
        activation: ActivationLike = "relu",
        gate: ActivationLike = "sigmoid",
        num_spatial_dims: int = 2,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        if squeeze_features is None:
            squeeze_features = common.make_divisible(in_features * se_ratio, divisor)
        get_activation(activation), get_activation(gate)
        params = dict(
            num_spatial_dims=num_spatial_dims, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs
        )
        self.reduce = PointwiseConv(in_features, squeeze_features, **params)
        self.expand = PointwiseConv(squeeze_features, in_features, **params)
        self.activation = activation
        self.gate = gate
        self.num_spatial_dims = num_spatial_dims

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Rescales the channels of channels-last ``x``."""
        x = jnp.asarray(x)
        common.check_input("SqueezeExcite", x, self.num_spatial_dims, "channels_last", self.reduce.in_features)
        s = common.mean_over_spatial(x, self.num_spatial_dims, "channels_last")
        s = self.expand(get_activation(self.activation)(self.reduce(s)))
        s = get_activation(self.gate)(s)
        return x * s.astype(x.dtype)


class InvertedResidual(nnx.Module):
    """MobileNetV2/V3 inverted residual: expand 1x1, depthwise, [squeeze-excite], project 1x1.

    Submodules: ``expand`` (:class:`ConvNormAct`, ``None`` when the expanded width equals
    ``in_features``), ``depthwise`` (:class:`ConvNormAct` with ``groups`` = expanded width),
    ``se`` (:class:`SqueezeExcite` or ``None``), ``project`` (:class:`ConvNormAct`, linear).
    The input is added back when ``strides`` are all 1 and ``in_features == out_features``,
    after stochastic depth (the residual branch dropped per example with probability
    ``stochastic_depth_rate`` in training, as torchvision's ``StochasticDepth(mode="row")``).

    Args:
      in_features: input channels.
      out_features: output channels.
      kernel_size: depthwise window (3 in V2, 3 or 5 in V3).
      strides: depthwise strides.
      expand_ratio: expanded width ``round(in_features * expand_ratio)`` unless
        ``expanded_features`` is given (V2 uses 6, its first block 1).
      expanded_features: expanded width, as MobileNetV3's tables give it.
      dilation: depthwise dilation.
      padding: depthwise padding (``"SAME"`` as Keras; an int ``(k - 1) // 2`` pads both
        sides alike, as PyTorch).
      activation: activation after expand and depthwise (``"relu6"`` in V2; ``"relu"`` or
        ``"hard_swish"`` in V3; ``"swish"`` in EfficientNet).
      se_ratio: squeeze ratio of the expanded width; ``None`` for no squeeze-excite.
      se_features: squeeze-excite bottleneck width, given directly (EfficientNet's is a
        quarter of ``in_features``, not of the expanded width); implies squeeze-excite.
      se_activation: bottleneck activation of the squeeze-excite.
      se_gate: gate of the squeeze-excite (``"hard_sigmoid"`` in V3).
      stochastic_depth_rate: probability of dropping the residual branch in training.
      num_spatial_dims: spatial rank when ``kernel_size`` is an int (1 for sequences, 3 for volumes).
      norm_momentum: momentum of the batch norms.
      norm_epsilon: epsilon of the batch norms.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      precision: passed to the convolutions.
      implementation: backend of the depthwise convolution.
      rngs: random number generators for initializers and stochastic depth.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> block = jdw.nnx.InvertedResidual(24, 24, expand_ratio=6, rngs=nnx.Rngs(0))
      >>> block.depthwise.conv.kernel.shape, block(jnp.ones((2, 56, 56, 24))).shape
      ((3, 3, 1, 144), (2, 56, 56, 24))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        strides: int | Sequence[int] = 1,
        expand_ratio: float = 6.0,
        expanded_features: int | None = None,
        dilation: int | Sequence[int] = 1,
        padding: PaddingLike = "SAME",
        activation: ActivationLike = "relu6",
        se_ratio: float | None = None,
        se_features: int | None = None,
        se_activation: ActivationLike = "relu",
        se_gate: ActivationLike = "sigmoid",
        stochastic_depth_rate: float = 0.0,
        num_spatial_dims: int = 2,
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        kernel_size = common.kernel_size_tuple(kernel_size, num_spatial_dims, "InvertedResidual")
        nd = len(kernel_size)
        hidden = common.expanded_width(in_features, expand_ratio, expanded_features, "InvertedResidual")
        if not 0.0 <= stochastic_depth_rate < 1.0:
            raise ValueError(f"InvertedResidual: stochastic_depth_rate must be in [0, 1), got {stochastic_depth_rate}")
        shared = dict(
            norm_momentum=norm_momentum,
            norm_epsilon=norm_epsilon,
            num_spatial_dims=nd,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            rngs=rngs,
        )
        self.expand = (
            ConvNormAct(in_features, hidden, 1, activation=activation, **shared) if hidden != in_features else None
        )
        self.depthwise = ConvNormAct(
            hidden,
            hidden,
            kernel_size,
            strides=strides,
            groups=hidden,
            padding=padding,
            dilation=dilation,
            activation=activation,
            implementation=implementation,
            **shared,
        )
        self.se = (
            SqueezeExcite(
                hidden,
                se_features,
                se_ratio=se_ratio or 0.25,
                activation=se_activation,
                gate=se_gate,
                num_spatial_dims=nd,
                dtype=dtype,
                param_dtype=param_dtype,
                precision=precision,
                rngs=rngs,
            )
            if se_ratio or se_features
            else None
        )
        self.project = ConvNormAct(hidden, out_features, 1, activation=None, **shared)
        self.use_residual = common.residual_allowed(in_features, out_features, strides, nd)
        self.drop_path = (
            nnx.Dropout(stochastic_depth_rate, broadcast_dims=tuple(range(1, nd + 2)), rngs=rngs)
            if self.use_residual and stochastic_depth_rate > 0
            else None
        )
        self.in_features = in_features
        self.out_features = out_features

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies the block to channels-last ``x`` of shape ``(N, *spatial, in_features)``."""
        x = jnp.asarray(x)
        num_spatial = len(self.depthwise.conv.kernel_size)
        common.check_input("InvertedResidual", x, num_spatial, "channels_last", self.in_features)
        y = self.expand(x) if self.expand is not None else x
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        if not self.use_residual:
            return y
        if self.drop_path is not None:
            y = self.drop_path(y)
        return x.astype(y.dtype) + y
