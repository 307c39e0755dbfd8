"""MobileNetV3 Small and Large (Howard et al., 2019), as Keras applications builds them."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jdw._layer_common import make_divisible
from jdw.models._base import ConvNet, check_model_args, check_padding, example_of, layer_padding
from jdw.nnx import ConvNormAct, InvertedResidual

# (kernel, expansion, output channels, squeeze-excite, activation, stride): Tables 1 and 2 of
# the paper. "K", "SE" and "ACT" are 5, 0.25 and hard-swish, or 3, none and ReLU in the
# minimalistic variant; the other entries are fixed.
LARGE = (
    (3, 1, 16, None, "relu", 1), (3, 4, 24, None, "relu", 2), (3, 3, 24, None, "relu", 1),
    ("K", 3, 40, "SE", "relu", 2), ("K", 3, 40, "SE", "relu", 1), ("K", 3, 40, "SE", "relu", 1),
    (3, 6, 80, None, "ACT", 2), (3, 2.5, 80, None, "ACT", 1), (3, 2.3, 80, None, "ACT", 1),
    (3, 2.3, 80, None, "ACT", 1), (3, 6, 112, "SE", "ACT", 1), (3, 6, 112, "SE", "ACT", 1),
    ("K", 6, 160, "SE", "ACT", 2), ("K", 6, 160, "SE", "ACT", 1), ("K", 6, 160, "SE", "ACT", 1),
)  # fmt: skip
SMALL = (
    (3, 1, 16, "SE", "relu", 2), (3, 72 / 16, 24, None, "relu", 2), (3, 88 / 24, 24, None, "relu", 1),
    ("K", 4, 40, "SE", "ACT", 2), ("K", 6, 40, "SE", "ACT", 1), ("K", 6, 40, "SE", "ACT", 1),
    ("K", 3, 48, "SE", "ACT", 1), ("K", 3, 48, "SE", "ACT", 1), ("K", 6, 96, "SE", "ACT", 2),
    ("K", 6, 96, "SE", "ACT", 1), ("K", 6, 96, "SE", "ACT", 1),
)  # fmt: skip


class _MobileNetV3(ConvNet):
    TABLE: tuple = ()
    LAST_POINT: int = 0

    def __init__(
        self,
        num_classes: int | None = 1000,
        *,
        width: float = 1.0,
        minimalistic: bool = False,
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
        check_model_args(type(self).__name__, num_classes, width)
        kernel, se_ratio, act = (3, None, "relu") if minimalistic else (5, 0.25, "hard_swish")
        padding = check_padding(type(self).__name__, padding)
        shared = dict(norm_momentum=norm_momentum, norm_epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype)
        stem_strides = 1 if small_inputs else 2
        stem = ConvNormAct(
            in_features,
            16,
            3,
            strides=stem_strides,
            padding=layer_padding(padding, 3),
            activation=act,
            rngs=rngs,
            **shared,
        )
        channels, blocks, strides = 16, [], []
        first_stride_two = True
        for index, (k, expansion, out, se, activation, s) in enumerate(self.TABLE):
            if s == 2 and first_stride_two:
                first_stride_two = False
                s = 1 if small_inputs else 2
            out = make_divisible(out * width)
            k = kernel if k == "K" else k
            blocks.append(
                InvertedResidual(
                    channels,
                    out,
                    k,
                    strides=s,
                    padding=layer_padding(padding, k),
                    expanded_features=make_divisible(channels * expansion),
                    activation=act if activation == "ACT" else activation,
                    se_ratio=se_ratio if se == "SE" else None,
                    se_activation="relu",
                    se_gate="hard_sigmoid",
                    stochastic_depth_rate=stochastic_depth_rate * index / len(self.TABLE),
                    implementation=implementation,
                    rngs=rngs,
                    **shared,
                )
            )
            strides.append(s)
            channels = out
        last_conv = make_divisible(channels * 6)
        last_point = make_divisible(self.LAST_POINT * width) if width > 1.0 else self.LAST_POINT
        linear = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        super().__init__(
            stem=stem,
            stem_strides=stem_strides,
            blocks=blocks,
            block_strides=strides,
            head=ConvNormAct(channels, last_conv, 1, activation=act, rngs=rngs, **shared),
            pre_logits=nnx.Linear(last_conv, last_point, **linear) if num_classes else None,
            pre_logits_activation=act,
            dropout=nnx.Dropout(dropout, rngs=rngs),
            classifier=nnx.Linear(last_point, num_classes, **linear) if num_classes else None,
            in_features=in_features,
            num_classes=num_classes,
            width=width,
            input_rescaling=input_rescaling,
        )
        self.minimalistic = minimalistic


_DOC = """MobileNetV3-{size}: inverted residuals with squeeze-excite and hard-swish, found by NAS.

    With ``width=1.0`` and 1000 classes it has {params} trainable parameters, those of
    ``keras.applications.MobileNetV3{size}`` and ``torchvision.models.mobilenet_v3_{lower}``.
    Built as Keras builds it: a 16-channel stem, channels ``make_divisible(c * width)``,
    squeeze-excite to a quarter of the expanded width with a hard-sigmoid gate, a last
    1x1 conv-norm-act to six times the channels, then (with a classifier) pooling, a dense
    layer to {last} features with the activation, dropout, and the classifier.

    Args:
      num_classes: classifier outputs; ``None`` drops pooling, the dense layer and the
        classifier (``__call__`` then returns the last feature map).
      width: width multiplier (Keras's ``alpha``).
      minimalistic: Keras's minimalistic variant: 3x3 kernels, ReLU, no squeeze-excite.
      in_features: input channels.
      dropout: dropout rate before the classifier.
      small_inputs: stride 1 instead of 2 in the stem and the first stride-2 block (for
        32x32 images); the total stride becomes 8.
      input_rescaling: optional ``(scale, offset)`` applied to the input first; Keras's
        built-in preprocessing is ``(1 / 127.5, -1.0)``, for pixels in [0, 255].
      stochastic_depth_rate: drop rate of the residual branches, rising linearly over the blocks.
      padding: ``"SAME"`` pads the stride-2 layers as Keras (TensorFlow) does,
        ``"SYMMETRIC"`` as torchvision does (:func:`jdw.models.from_torch` uses it).
      norm_momentum: momentum of the batch norms' running statistics.
      norm_epsilon: epsilon of the batch norms.
      implementation: backend of every depthwise convolution.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      rngs: random number generators.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> model = jdw.models.MobileNetV3{size}(num_classes=10, rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> model(jnp.zeros((2, 64, 64, 3))).shape
      (2, 10)

    References:
      Howard et al., *Searching for MobileNetV3*, ICCV 2019.
    """


class MobileNetV3Small(_MobileNetV3):
    __doc__ = example_of(_DOC.format(size="Small", lower="small", params="2,542,856", last=1024), "MobileNetV3Large")
    TABLE = SMALL
    LAST_POINT = 1024


class MobileNetV3Large(_MobileNetV3):
    __doc__ = _DOC.format(size="Large", lower="large", params="5,483,032", last=1280)
    TABLE = LARGE
    LAST_POINT = 1280
