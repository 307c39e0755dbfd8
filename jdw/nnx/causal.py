"""Flax NNX causal depthwise 1-D convolution with a decode cache, for sequence models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes
from jax.nn import initializers
from jax.typing import ArrayLike, DTypeLike

from jdw import _layer_common as common
from jdw.functional.activations import get_activation
from jdw.functional.causal import causal_conv1d, state_size
from jdw.nnx.conv import _DEPTHWISE_INIT, _NO_METADATA, Initializer, _optional_param
from jdw.typing import ActivationLike, DataFormat


class CausalConv1D(nnx.Module):
    """Causal depthwise 1-D convolution (Flax NNX), with a cache for autoregressive decoding.

    A drop-in for ``nnx.Conv(D, D * M, (W,), feature_group_count=D, padding="CAUSAL")``: the
    parameters are named and shaped alike (``kernel``: ``(W, 1, D * M)``, ``bias``:
    ``(D * M,)``). It calls :func:`jdw.causal_conv1d`; after :meth:`init_cache`, calls with
    ``decode=True`` continue from the cached state and update it, the way Flax's attention
    keeps its key/value cache: prefill a prompt of any length, then one token at a time.

    Args:
      in_features: channels ``D``.
      kernel_size: ``W`` (4 in Mamba, 31 in Conformer).
      depth_multiplier: ``M``, output channels per input channel.
      dilation: spacing of the taps.
      use_bias: whether to add a bias.
      activation: after the bias (``"silu"`` in Mamba), name or callable.
      data_format: ``"channels_last"`` (``(B, L, D)``) or ``"channels_first"`` (``(B, D, L)``).
      dtype: dtype of the computation; by default the promoted dtype of input and parameters.
      param_dtype: dtype of the parameters.
      precision: see :func:`jdw.depthwise_conv`.
      kernel_init: initializer of the kernel.
      bias_init: initializer of the bias.
      implementation: backend, see :func:`jdw.depthwise_conv`.
      rngs: random number generators for the initializers.
      kernel_metadata: metadata of the kernel ``nnx.Param``.
      bias_metadata: metadata of the bias ``nnx.Param``.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> conv = jdw.nnx.CausalConv1D(8, 4, activation="silu", rngs=nnx.Rngs(0))
      >>> x = jnp.ones((2, 10, 8))
      >>> conv.init_cache(batch_size=2)
      >>> prompt = conv(x[:, :7], decode=True)              # prefill
      >>> steps = [conv(x[:, t : t + 1], decode=True) for t in range(7, 10)]  # then one token at a time
      >>> bool(jnp.allclose(jnp.concatenate([prompt, *steps], axis=1), conv(x), atol=1e-6))
      True
    """

    def __init__(
        self,
        in_features: int,
        kernel_size: int = 4,
        *,
        depth_multiplier: int = 1,
        dilation: int = 1,
        use_bias: bool = True,
        activation: ActivationLike = None,
        data_format: DataFormat = "channels_last",
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        kernel_init: Initializer = _DEPTHWISE_INIT,
        bias_init: Initializer = initializers.zeros,
        implementation: str | None = None,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        (kernel_size,) = common.kernel_size_tuple(kernel_size, 1, "CausalConv1D")
        common.check_positive_int(
            "CausalConv1D", in_features=in_features, depth_multiplier=depth_multiplier, dilation=dilation
        )
        get_activation(activation)
        common.check_conv_options(
            "CausalConv1D", (kernel_size,), dilation=dilation, data_format=data_format, implementation=implementation
        )
        out_features = in_features * depth_multiplier
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (kernel_size, 1, out_features), param_dtype), **kernel_metadata
        )
        self.bias = _optional_param(use_bias, bias_init, rngs, (out_features,), param_dtype, bias_metadata)
        self.state = nnx.data(None)
        self.position = nnx.data(None)
        self.in_features, self.out_features = in_features, out_features
        self.kernel_size, self.depth_multiplier, self.dilation = kernel_size, depth_multiplier, dilation
        self.use_bias, self.activation, self.data_format = use_bias, activation, data_format
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        self.implementation = implementation

    @property
    def state_size(self) -> int:
        """Past tokens the cache keeps: ``(kernel_size - 1) * dilation``."""
        return state_size(self.kernel_size, self.dilation)

    def init_cache(self, batch_size: int, dtype: DTypeLike | None = None) -> None:
        """Makes (or resets) the decode cache: zeros for ``batch_size`` sequences that start now.

        The cache is ``state``, the last ``state_size`` inputs as a ring buffer (see
        :func:`jdw.causal_conv1d_update`), and ``position``, its slot of the oldest input:
        ``jdw.ordered_state(conv.state[...], conv.position[...])`` is the state in order.

        Raises:
          ValueError: for a kernel of width 1, which keeps no state.
        """
        common.check_positive_int("CausalConv1D.init_cache", batch_size=batch_size)
        if self.state_size == 0:
            raise ValueError("CausalConv1D with kernel_size=1 keeps no state: decode without init_cache")
        shape = (batch_size, self.state_size, self.in_features)
        if self.data_format == "channels_first":
            shape = (batch_size, self.in_features, self.state_size)
        self.state = nnx.Cache(jnp.zeros(shape, dtype or self.dtype or self.param_dtype))
        self.position = nnx.Cache(jnp.zeros((), jnp.int32))

    def __call__(self, x: ArrayLike, *, segment_ids: ArrayLike | None = None, decode: bool = False) -> jax.Array:
        """Applies the layer to ``x`` of shape ``(B, L, D)`` (``(B, D, L)`` channels first).

        Args:
          x: the sequence (or, with ``decode``, the next tokens of it).
          segment_ids: ``(B, L)`` ids of packed sequences, see :func:`jdw.causal_conv1d`.
          decode: continue from the cache made by :meth:`init_cache` and update it.
        """
        x = jnp.asarray(x)
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = dtypes.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
        run = dict(activation=self.activation, dilation=self.dilation, data_format=self.data_format)
        if not decode:
            return causal_conv1d(
                x,
                kernel,
                bias,
                segment_ids=segment_ids,
                precision=self.precision,
                implementation=self.implementation,
                **run,
            )
        if self.state is None:
            raise ValueError("CausalConv1D(decode=True) needs a cache: call init_cache(batch_size) first")
        y, state, position = common.causal_decode(
            x,
            self.state[...],
            self.position[...],
            kernel,
            bias,
            kernel_size=self.kernel_size,
            segment_ids=segment_ids,
            precision=self.precision,
            implementation=self.implementation,
            **run,
        )
        self.state[...] = state.astype(self.state.dtype)
        self.position[...] = position
        return y
