"""MobileNetV2 (Sandler et al., 2018), as Keras applications and torchvision build it."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jdw._layer_common import make_divisible
from jdw.models._base import ConvNet, check_model_args, check_padding, layer_padding
from jdw.nnx import ConvNormAct, InvertedResidual

# (expansion t, output channels c, repeats n, first stride s): Table 2 of the paper.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(ConvNet):
    """MobileNetV2: inverted residuals with linear bottlenecks.

    With ``width=1.0`` and 1000 classes it has 3,504,872 trainable parameters, those of
    ``keras.applications.MobileNetV2`` and ``torchvision.models.mobilenet_v2``. Channel
    counts follow Keras (``make_divisible(int(c * width), 8)``; the last 1x1 convolution
    keeps 1280 channels for ``width <= 1``). Batch norms use epsilon 1e-3 as Keras.

    Args:
      num_classes: classifier outputs; ``None`` drops pooling and classifier (``__call__``
        then returns the last feature map, 1280 channels at width 1).
      width: width multiplier (Keras's ``alpha``).
      in_features: input channels.
      dropout: dropout rate before the classifier.
      small_inputs: stride 1 instead of 2 in the stem and the first stride-2 stage, the
        usual adaptation to 32x32 images (CIFAR); the total stride becomes 8.
      input_rescaling: optional ``(scale, offset)`` applied to the input first.
      stochastic_depth_rate: drop rate of the residual branches, rising linearly to this
        value over the blocks (0 disables it).
      padding: ``"SAME"`` pads the stride-2 layers as Keras (TensorFlow) does,
        ``"SYMMETRIC"`` as torchvision does (:func:`jdw.models.from_torch` uses it).
      norm_momentum: momentum of the batch norms' running statistics.
      norm_epsilon: epsilon of the batch norms.
      implementation: backend of every depthwise convolution (see :func:`jdw.depthwise_conv`).
      dtype: dtype of the computation (for instance ``jnp.bfloat16``).
      param_dtype: dtype of the parameters.
      rngs: random number generators (``params``; ``dropout`` for training).

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> model = jdw.models.MobileNetV2(num_classes=10, width=0.35, rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> model(jnp.zeros((2, 96, 96, 3))).shape
      (2, 10)

    References:
      Sandler et al., *MobileNetV2: Inverted Residuals and Linear Bottlenecks*, CVPR 2018.
    """

    def __init__(
        self,
        num_classes: int | None = 1000,
        *,
        width: float = 1.0,
        in_features: int = 3,
        dropout: float = 0.2,
        small_inputs: bool = False,
        input_rescaling: tuple[float, float] | None = None,
        stochastic_depth_rate: float = 0.0,
        padding: str = "SAME",
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        implementation: str | None = None,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_model_args("MobileNetV2", num_classes, width)
        padding = check_padding(type(self).__name__, padding)
        shared = dict(norm_momentum=norm_momentum, norm_epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype)
        channels = make_divisible(32 * width, 8)
        stem_strides = 1 if small_inputs else 2
        stem = ConvNormAct(
            in_features,
            channels,
            3,
            strides=stem_strides,
            padding=layer_padding(padding, 3),
            activation="relu6",
            rngs=rngs,
            **shared,
        )
        specs = []
        first_stride_two = True
        for t, c, n, s in STAGES:
            if s == 2 and small_inputs and first_stride_two:
                s, first_stride_two = 1, False
            elif s == 2:
                first_stride_two = False
            specs += [(t, make_divisible(int(c * width), 8), s if i == 0 else 1) for i in range(n)]
        blocks = []
        for index, (t, out, s) in enumerate(specs):
            blocks.append(
                InvertedResidual(
                    channels,
                    out,
                    3,
                    strides=s,
                    padding=layer_padding(padding, 3),
                    expanded_features=channels * t,
                    activation="relu6",
                    stochastic_depth_rate=stochastic_depth_rate * index / len(specs),
                    implementation=implementation,
                    rngs=rngs,
                    **shared,
                )
            )
            channels = out
        last = make_divisible(1280 * width, 8) if width > 1.0 else 1280
        super().__init__(
            stem=stem,
            stem_strides=stem_strides,
            blocks=blocks,
            block_strides=[s for _, _, s in specs],
            head=ConvNormAct(channels, last, 1, activation="relu6", rngs=rngs, **shared),
            pre_logits=None,
            pre_logits_activation=None,
            dropout=nnx.Dropout(dropout, rngs=rngs),
            classifier=(
                nnx.Linear(last, num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs) if num_classes else None
            ),
            in_features=in_features,
            num_classes=num_classes,
            width=width,
            input_rescaling=input_rescaling,
        )
