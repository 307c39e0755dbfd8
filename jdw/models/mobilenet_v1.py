"""MobileNetV1 (Howard et al., 2017), as Keras applications builds it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike, DTypeLike

from jdw.models._base import ConvNet, check_model_args
from jdw.nnx import ConvNormAct

# (pointwise output channels, depthwise stride) of the 13 depthwise-separable layers: Table 1 of the paper.
LAYERS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip

# Keras pads stride-2 layers by one row and column at the end, whatever the input size.
_STRIDE_TWO_PADDING = ((0, 1), (0, 1))


class DepthwiseSeparable(nnx.Module):
    """MobileNetV1's layer: 3x3 depthwise conv-norm-act, then 1x1 pointwise conv-norm-act.

    Args:
      in_features: input channels.
      out_features: output channels.
      strides: depthwise stride.
      depth_multiplier: depthwise channels per input channel.
      activation: activation after both convolutions.
      rngs: random number generators.
      **kwargs: passed to both :class:`jdw.nnx.ConvNormAct`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jdw.models.mobilenet_v1 import DepthwiseSeparable
      >>> DepthwiseSeparable(32, 64, rngs=nnx.Rngs(0))(jnp.ones((1, 8, 8, 32))).shape
      (1, 8, 8, 64)
    """

    def __init__(self, in_features, out_features, *, strides=1, depth_multiplier=1, activation="relu6", rngs, **kwargs):
        middle = in_features * depth_multiplier
        padding = "SAME" if strides == 1 else _STRIDE_TWO_PADDING
        self.depthwise = ConvNormAct(
            in_features, middle, 3, strides=strides, groups=in_features, padding=padding,
            activation=activation, rngs=rngs, **kwargs,
        )  # fmt: skip
        kwargs.pop("implementation", None)
        self.pointwise = ConvNormAct(middle, out_features, 1, activation=activation, rngs=rngs, **kwargs)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies both convolutions."""
        return self.pointwise(self.depthwise(x))


class MobileNetV1(ConvNet):
    """MobileNetV1: a 3x3 convolution, then 13 depthwise-separable layers.

    With ``width=1.0`` and 1000 classes it has 4,231,976 trainable parameters, those of
    ``keras.applications.MobileNet``. As in Keras: channel counts are ``int(c * width)``,
    activations are ReLU6, stride-2 layers pad one pixel at the bottom and right only, and
    the classifier follows global pooling and a small dropout.

    Args:
      num_classes: classifier outputs; ``None`` drops pooling and classifier (``__call__``
        then returns the last feature map, 1024 channels at width 1).
      width: width multiplier (Keras's ``alpha``).
      depth_multiplier: depthwise channels per input channel (Keras's ``depth_multiplier``).
      in_features: input channels.
      dropout: dropout rate before the classifier (Keras's default 1e-3).
      small_inputs: stride 1 instead of 2 in the stem and the first stride-2 layer (for
        32x32 images); the total stride becomes 8.
      input_rescaling: optional ``(scale, offset)`` applied to the input first.
      stochastic_depth_rate: accepted for a signature common to all MobileNets; V1 has no
        residual blocks, so only 0 is valid.
      norm_momentum: momentum of the batch norms' running statistics.
      norm_epsilon: epsilon of the batch norms.
      implementation: backend of every depthwise convolution.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      rngs: random number generators.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> model = jdw.models.MobileNetV1(num_classes=10, width=0.25, rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> model(jnp.zeros((2, 64, 64, 3))).shape
      (2, 10)

    References:
      Howard et al., *MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
      Applications*, 2017.
    """

    def __init__(
        self,
        num_classes: int | None = 1000,
        *,
        width: float = 1.0,
        depth_multiplier: int = 1,
        in_features: int = 3,
        dropout: float = 1e-3,
        small_inputs: bool = False,
        input_rescaling: tuple[float, float] | None = None,
        stochastic_depth_rate: float = 0.0,
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        implementation: str | None = None,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_model_args("MobileNetV1", num_classes, width, min_width=1 / 32)
        if stochastic_depth_rate:
            raise ValueError(
                f"MobileNetV1 has no residual blocks to drop, so stochastic_depth_rate must be 0, "
                f"got stochastic_depth_rate={stochastic_depth_rate!r}"
            )
        shared = dict(norm_momentum=norm_momentum, norm_epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype)
        channels = int(32 * width)
        stem_strides = 1 if small_inputs else 2
        stem = ConvNormAct(
            in_features, channels, 3, strides=stem_strides,
            padding="SAME" if small_inputs else _STRIDE_TWO_PADDING, activation="relu6", rngs=rngs, **shared,
        )  # fmt: skip
        strides = [s for _, s in LAYERS]
        if small_inputs:
            strides[strides.index(2)] = 1
        blocks = []
        for (out, _), s in zip(LAYERS, strides):
            out = int(out * width)
            blocks.append(
                DepthwiseSeparable(
                    channels, out, strides=s, depth_multiplier=depth_multiplier,
                    implementation=implementation, rngs=rngs, **shared,
                )
            )  # fmt: skip
            channels = out
        super().__init__(
            stem=stem,
            stem_strides=stem_strides,
            blocks=blocks,
            block_strides=strides,
            head=None,
            pre_logits=None,
            pre_logits_activation=None,
            dropout=nnx.Dropout(dropout, rngs=rngs),
            classifier=(
                nnx.Linear(channels, num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                if num_classes
                else None
            ),
            in_features=in_features,
            num_classes=num_classes,
            width=width,
            input_rescaling=input_rescaling,
            min_input_size=stem_strides * math.prod(strides),
        )
