"""Flax Linen causal depthwise 1-D convolution with a decode cache, for sequence models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import dtypes
from jax.nn import initializers
from jax.typing import ArrayLike, DTypeLike

from jdw import _layer_common as common
from jdw.functional.activations import get_activation
from jdw.functional.causal import causal_conv1d, state_size
from jdw.linen.conv import _DEPTHWISE_INIT, Initializer
from jdw.typing import ActivationLike, DataFormat


class CausalConv1D(nn.Module):
    """Causal depthwise 1-D convolution (Flax Linen), with a ``"cache"`` collection for decoding.

    The same layer as :class:`jdw.nnx.CausalConv1D` with Linen's conventions: the channels come
    from the input, and with ``decode=True`` the state lives in the ``"cache"`` collection
    the way ``nn.MultiHeadDotProductAttention`` keeps its cache. ``init`` with the batch's
    shape makes a zero cache; apply with ``mutable=["cache"]`` to prefill and then decode. The
    cache holds ``state``, the last inputs as a ring buffer (:func:`jdw.causal_conv1d_update`),
    and ``position``, its slot of the oldest one.

    Attributes:
      kernel_size: ``W``.
      depth_multiplier: ``M``, output channels per input channel.
      dilation: spacing of the taps.
      use_bias: whether to add a bias.
      activation: after the bias, name or callable.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      precision: see :func:`jdw.depthwise_conv`.
      kernel_init: initializer of the kernel.
      bias_init: initializer of the bias.
      implementation: backend, see :func:`jdw.depthwise_conv`.
      decode: continue from the cached state and update it.

    Examples:
      >>> import jax, jax.numpy as jnp, jdw
      >>> x = jnp.ones((2, 10, 8))
      >>> layer = jdw.linen.CausalConv1D(4, activation="silu")
      >>> params = layer.init(jax.random.key(0), x)["params"]
      >>> decoder = jdw.linen.CausalConv1D(4, activation="silu", decode=True)
      >>> cache = decoder.init(jax.random.key(0), x[:, :1])["cache"]      # zeros for a batch of 2
      >>> y, vars = decoder.apply({"params": params, "cache": cache}, x[:, :7], mutable=["cache"])
      >>> y2, vars = decoder.apply({"params": params, **vars}, x[:, 7:8], mutable=["cache"])
      >>> bool(jnp.allclose(y2, layer.apply({"params": params}, x)[:, 7:8], atol=1e-6))
      True
    """

    kernel_size: int = 4
    depth_multiplier: int = 1
    dilation: int = 1
    use_bias: bool = True
    activation: ActivationLike = None
    data_format: DataFormat = "channels_last"
    dtype: DTypeLike | None = None
    param_dtype: DTypeLike = jnp.float32
    precision: jax.lax.PrecisionLike = None
    kernel_init: Initializer = _DEPTHWISE_INIT
    bias_init: Initializer = initializers.zeros
    implementation: str | None = None
    decode: bool = False

    def __post_init__(self):
        # Refuse bad options when the module is built, as the NNX layer does, not at the first call.
        (kernel_size,) = common.kernel_size_tuple(self.kernel_size, 1, "CausalConv1D")
        get_activation(self.activation)
        common.check_conv_options(
            "CausalConv1D",
            (kernel_size,),
            dilation=self.dilation,
            data_format=self.data_format,
            implementation=self.implementation,
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: ArrayLike, segment_ids: ArrayLike | None = None) -> jax.Array:
        """Applies the layer to ``x`` of shape ``(B, L, D)`` (``(B, D, L)`` channels first)."""
        x = jnp.asarray(x)
        (kernel_size,) = common.kernel_size_tuple(self.kernel_size, 1, "CausalConv1D")
        common.check_positive_int("CausalConv1D", depth_multiplier=self.depth_multiplier, dilation=self.dilation)
        get_activation(self.activation)
        channels = common.check_input("CausalConv1D", x, 1, self.data_format, None)
        out_features = channels * self.depth_multiplier
        kernel = self.param("kernel", self.kernel_init, (kernel_size, 1, out_features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (out_features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        run = dict(activation=self.activation, dilation=self.dilation, data_format=self.data_format)
        if not self.decode:
            return causal_conv1d(
                x,
                kernel,
                bias,
                segment_ids=segment_ids,
                precision=self.precision,
                implementation=self.implementation,
                **run,
            )
        pad = state_size(kernel_size, self.dilation)
        if pad == 0:
            raise ValueError("CausalConv1D with kernel_size=1 keeps no state: use decode=False")
        batch = x.shape[0]
        shape = (batch, pad, channels) if self.data_format == "channels_last" else (batch, channels, pad)
        initialized = self.has_variable("cache", "state")
        cache = self.variable("cache", "state", jnp.zeros, shape, x.dtype)
        position = self.variable("cache", "position", jnp.zeros, (), jnp.int32)
        y, state, new_position = common.causal_decode(
            x,
            cache.value,
            position.value,
            kernel,
            bias,
            kernel_size=kernel_size,
            segment_ids=segment_ids,
            precision=self.precision,
            implementation=self.implementation,
            **run,
        )
        if initialized:  # init only shapes the cache: it stays zeros for the sequences to come
            cache.value = state.astype(cache.value.dtype)
            position.value = new_position
        return y
