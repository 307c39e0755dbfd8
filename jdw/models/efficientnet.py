"""EfficientNet B0-B7 (Tan & Le, 2019) and EfficientNetV2-S (Tan & Le, 2021), as Keras applications builds them."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike, DTypeLike

from jdw import _layer_common as common
from jdw._layer_common import make_divisible
from jdw.models._base import ConvNet, check_model_args, check_padding, example_of, layer_padding
from jdw.nnx import ConvNormAct, InvertedResidual

# (kernel, repeats, input channels, output channels, expansion, first stride): the seven
# MBConv stages of EfficientNet-B0 (Table 1 of the paper; squeeze-excite 0.25 everywhere).
B0_STAGES = (
    (3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1),
)  # fmt: skip

# (width coefficient, depth coefficient, resolution, dropout) of B0-B7 (Keras applications).
COEFFICIENTS = {
    "B0": (1.0, 1.0, 224, 0.2), "B1": (1.0, 1.1, 240, 0.2), "B2": (1.1, 1.2, 260, 0.3),
    "B3": (1.2, 1.4, 300, 0.3), "B4": (1.4, 1.8, 380, 0.4), "B5": (1.6, 2.2, 456, 0.4),
    "B6": (1.8, 2.6, 528, 0.5), "B7": (2.0, 3.1, 600, 0.5),
}  # fmt: skip

# (kernel, repeats, input, output, expansion, first stride, squeeze-excite ratio, fused):
# EfficientNetV2-S (Table 4 of the V2 paper; Keras's "efficientnetv2-s" block arguments).
V2S_STAGES = (
    (3, 2, 24, 24, 1, 1, 0.0, True), (3, 4, 24, 48, 4, 2, 0.0, True), (3, 4, 48, 64, 4, 2, 0.0, True),
    (3, 6, 64, 128, 4, 2, 0.25, False), (3, 9, 128, 160, 6, 1, 0.25, False),
    (3, 15, 160, 256, 6, 2, 0.25, False),
)  # fmt: skip


class FusedMBConv(nnx.Module):
    """EfficientNetV2's fused MBConv: one regular k x k convolution instead of 1x1 expand + depthwise.

    With ``expand_ratio > 1``: a k x k conv-norm-act to the expanded width (with the
    stride), then a linear 1x1 conv-norm back down. With ``expand_ratio == 1``: a single
    k x k conv-norm-act. The input is added back (after stochastic depth) when the
    stride is 1 and the widths agree. Submodules ``expand`` (``None`` at ratio 1) and
    ``project``.

    Args:
      in_features: input channels.
      out_features: output channels.
      kernel_size: window of the regular convolution.
      strides: its stride.
      expand_ratio: expanded width ``in_features * expand_ratio``.
      activation: activation after the expansion (or the single convolution).
      stochastic_depth_rate: probability of dropping the residual branch in training.
      padding: padding of the k x k convolution.
      rngs: random number generators.
      **kwargs: passed to both :class:`jdw.nnx.ConvNormAct` (norm options, dtypes).

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jdw.models.efficientnet import FusedMBConv
      >>> FusedMBConv(24, 48, strides=2, expand_ratio=4, rngs=nnx.Rngs(0))(jnp.ones((1, 16, 16, 24))).shape
      (1, 8, 8, 48)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int = 3,
        *,
        strides: int = 1,
        expand_ratio: int = 4,
        activation="swish",
        stochastic_depth_rate: float = 0.0,
        padding="SAME",
        rngs: nnx.Rngs,
        **kwargs,
    ):
        hidden = in_features * expand_ratio
        if expand_ratio != 1:
            self.expand = ConvNormAct(
                in_features, hidden, kernel_size, strides=strides, padding=padding, activation=activation,
                rngs=rngs, **kwargs,
            )  # fmt: skip
            self.project = ConvNormAct(hidden, out_features, 1, activation=None, rngs=rngs, **kwargs)
        else:
            self.expand = None
            self.project = ConvNormAct(
                in_features, out_features, kernel_size, strides=strides, padding=padding, activation=activation,
                rngs=rngs, **kwargs,
            )  # fmt: skip
        self.use_residual = common.residual_allowed(in_features, out_features, strides, 2)
        self.drop_path = (
            nnx.Dropout(stochastic_depth_rate, broadcast_dims=(1, 2, 3), rngs=rngs)
            if self.use_residual and stochastic_depth_rate > 0
            else None
        )
        self.in_features = in_features

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies the block to channels-last images."""
        x = jnp.asarray(x)
        common.check_input("FusedMBConv", x, 2, "channels_last", self.in_features)
        y = self.project(self.expand(x) if self.expand is not None else x)
        if not self.use_residual:
            return y
        if self.drop_path is not None:
            y = self.drop_path(y)
        return x.astype(y.dtype) + y


def depthwise_layers(cls: type) -> int:
    """How many depthwise layers an EfficientNet class builds (one per MBConv block, none in a fused one).

    The weight importers use it to skip variants that cannot match before building any.
    """
    if cls.V2:
        return sum(stage[1] for stage in V2S_STAGES if not stage[-1])
    depth = COEFFICIENTS[cls.VARIANT][1]
    return sum(math.ceil(depth * stage[1]) for stage in B0_STAGES)


def _stage_strides(stages, small_inputs: bool) -> list[int]:
    """Each stage's first stride; ``small_inputs`` turns the first stride-2 stage's into 1."""
    strides, first = [], True
    for stage in stages:
        s = stage[5]
        if s == 2 and first:
            first = False
            s = 1 if small_inputs else 2
        strides.append(s)
    return strides


class _EfficientNet(ConvNet):
    """The model shared by B0-B7 and V2-S; the subclasses fix the table and coefficients."""

    VARIANT = "B0"
    V2 = False

    def __init__(
        self,
        num_classes: int | None = 1000,
        *,
        width: float = 1.0,
        in_features: int = 3,
        dropout: float | None = None,
        small_inputs: bool = False,
        input_rescaling: tuple | None = None,
        stochastic_depth_rate: float = 0.2,
        padding: str = "SAME",
        norm_momentum: float | None = None,
        norm_epsilon: float = 1e-3,
        implementation: str | None = None,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        check_model_args(name, num_classes, width, stochastic_depth_rate=stochastic_depth_rate)
        padding = check_padding(name, padding)
        if self.V2:
            width_coefficient, depth_coefficient, default_dropout, stages = 1.0, 1.0, 0.2, V2S_STAGES
            momentum = 0.9
        else:
            width_coefficient, depth_coefficient, _, default_dropout = COEFFICIENTS[self.VARIANT]
            stages = tuple((*stage, 0.25, False) for stage in B0_STAGES)
            momentum = 0.99
        width_coefficient *= width
        dropout = default_dropout if dropout is None else dropout
        momentum = momentum if norm_momentum is None else norm_momentum
        shared = dict(norm_momentum=momentum, norm_epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype)

        def channels(c):
            return make_divisible(c * width_coefficient, 8)

        stem_strides = 1 if small_inputs else 2
        stem_out = channels(stages[0][2])
        stem = ConvNormAct(
            in_features, stem_out, 3, strides=stem_strides, padding=layer_padding(padding, 3), activation="swish",
            rngs=rngs, **shared,
        )  # fmt: skip
        repeats = [math.ceil(depth_coefficient * stage[1]) for stage in stages]
        total = sum(repeats)
        blocks, block_strides, index = [], [], 0
        for stage, n, first_stride in zip(stages, repeats, _stage_strides(stages, small_inputs)):
            kernel, _, c_in, c_out, expansion, _, se_ratio, fused = stage
            c_in, c_out = channels(c_in), channels(c_out)
            for j in range(n):
                strides = first_stride if j == 0 else 1
                rate = stochastic_depth_rate * index / total
                if fused:
                    block = FusedMBConv(
                        c_in, c_out, kernel, strides=strides, expand_ratio=expansion, activation="swish",
                        stochastic_depth_rate=rate, padding=layer_padding(padding, kernel), rngs=rngs, **shared,
                    )  # fmt: skip
                else:
                    block = InvertedResidual(
                        c_in, c_out, kernel, strides=strides, expanded_features=c_in * expansion,
                        padding=layer_padding(padding, kernel), activation="swish",
                        se_features=max(1, int(c_in * se_ratio)) if se_ratio else None,
                        se_activation="swish", se_gate="sigmoid",
                        stochastic_depth_rate=rate, implementation=implementation, rngs=rngs, **shared,
                    )  # fmt: skip
                blocks.append(block)
                block_strides.append(strides)
                c_in = c_out
                index += 1
        last = channels(1280)
        super().__init__(
            stem=stem,
            stem_strides=stem_strides,
            blocks=blocks,
            block_strides=block_strides,
            head=ConvNormAct(c_in, last, 1, activation="swish", rngs=rngs, **shared),
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


_DOC = """EfficientNet-{variant}: MBConv blocks with squeeze-excite and swish, compound-scaled.

    Width coefficient {w}, depth coefficient {d}, trained at {res}x{res}. With 1000 classes it
    has {params} trainable parameters, those of ``keras.applications.EfficientNet{variant}``{torch}.
    Built as Keras builds it: channels ``make_divisible(c * width_coefficient)``, repeats
    ``ceil(n * depth_coefficient)``, squeeze-excite to a quarter of each block's input
    width, batch norms with momentum 0.99 and epsilon 1e-3, stochastic depth rising
    linearly to ``stochastic_depth_rate`` over the blocks. Keras's built-in preprocessing
    (rescaling and per-channel normalisation) is not part of the model: pass it as
    ``input_rescaling`` (:func:`jdw.models.from_keras` does).

    Args:
      num_classes: classifier outputs; ``None`` drops pooling and classifier (``__call__``
        then returns the last feature map).
      width: an extra width multiplier on top of the variant's coefficient.
      in_features: input channels.
      dropout: dropout before the classifier (default: the variant's, {dropout}).
      small_inputs: stride 1 instead of 2 in the stem and the first stride-2 stage (for
        32x32 images); the total stride becomes 8.
      input_rescaling: optional ``(scale, offset)`` applied to the images first (floats,
        or one value per channel).
      stochastic_depth_rate: drop rate of the last residual branch (Keras's ``drop_connect_rate``).
      padding: ``"SAME"`` pads the stride-2 layers as Keras (TensorFlow) does,
        ``"SYMMETRIC"`` as torchvision does (:func:`jdw.models.from_torch` uses it).
      norm_momentum: momentum of the batch norms' running statistics (default 0.99).
      norm_epsilon: epsilon of the batch norms.
      implementation: backend of every depthwise convolution.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      rngs: random number generators (``params``; ``dropout`` for training).

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> model = jdw.models.EfficientNet{variant}(num_classes=10, rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> model(jnp.zeros((1, 64, 64, 3))).shape
      (1, 10)

    References:
      Tan and Le, *EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks*, ICML 2019.
    """

_PARAMS = {
    "B0": "5,288,548", "B1": "7,794,184", "B2": "9,109,994", "B3": "12,233,232",
    "B4": "19,341,616", "B5": "30,389,784", "B6": "43,040,704", "B7": "66,347,960",
}  # fmt: skip


def _doc(variant: str) -> str:
    w, d, res, dropout = COEFFICIENTS[variant]
    torch = f" and ``torchvision.models.efficientnet_{variant.lower()}``"
    doc = _DOC.format(variant=variant, w=w, d=d, res=res, dropout=dropout, params=_PARAMS[variant], torch=torch)
    return doc if variant == "B0" else example_of(doc, "EfficientNetB0")


class EfficientNetB0(_EfficientNet):
    __doc__ = _doc("B0")
    VARIANT = "B0"


class EfficientNetB1(_EfficientNet):
    __doc__ = _doc("B1")
    VARIANT = "B1"


class EfficientNetB2(_EfficientNet):
    __doc__ = _doc("B2")
    VARIANT = "B2"


class EfficientNetB3(_EfficientNet):
    __doc__ = _doc("B3")
    VARIANT = "B3"


class EfficientNetB4(_EfficientNet):
    __doc__ = _doc("B4")
    VARIANT = "B4"


class EfficientNetB5(_EfficientNet):
    __doc__ = _doc("B5")
    VARIANT = "B5"


class EfficientNetB6(_EfficientNet):
    __doc__ = _doc("B6")
    VARIANT = "B6"


class EfficientNetB7(_EfficientNet):
    __doc__ = _doc("B7")
    VARIANT = "B7"


class EfficientNetV2S(_EfficientNet):
    """EfficientNetV2-S: fused-MBConv early stages, MBConv with squeeze-excite later.

    With 1000 classes it has 21,458,488 trainable parameters, those of
    ``keras.applications.EfficientNetV2S``. Built as Keras builds it: three fused-MBConv
    stages (a regular 3x3 convolution, no squeeze-excite) then three MBConv stages, batch
    norms with momentum 0.9 and epsilon 1e-3, swish, stochastic depth rising linearly
    over the blocks. Keras's preprocessing (``x / 255`` then ImageNet mean and standard
    deviation) is not part of the model: pass it as ``input_rescaling``
    (:func:`jdw.models.from_keras` does).

    Args:
      num_classes: classifier outputs; ``None`` drops pooling and classifier.
      width: width multiplier.
      in_features: input channels.
      dropout: dropout before the classifier (default 0.2).
      small_inputs: stride 1 instead of 2 in the stem and the first stride-2 stage.
      input_rescaling: optional ``(scale, offset)`` applied to the images first.
      stochastic_depth_rate: drop rate of the last residual branch.
      padding: ``"SAME"`` (Keras) or ``"SYMMETRIC"`` (PyTorch).
      norm_momentum: momentum of the batch norms' running statistics (default 0.9).
      norm_epsilon: epsilon of the batch norms.
      implementation: backend of every depthwise convolution.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      rngs: random number generators.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> model = jdw.models.EfficientNetV2S(num_classes=10, rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> model(jnp.zeros((1, 64, 64, 3))).shape
      (1, 10)

    References:
      Tan and Le, *EfficientNetV2: Smaller Models and Faster Training*, ICML 2021.
    """

    VARIANT = "V2S"
    V2 = True
