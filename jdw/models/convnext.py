"""ConvNeXt Tiny, Small and Base (Liu et al., 2022), as Keras applications and torchvision build them."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike, DTypeLike

from jdw import _layer_common as common
from jdw.models._base import ConvNet, check_model_args, example_of
from jdw.nnx import DepthwiseConv

# (blocks per stage, channels per stage) of each size (Section 2 of the paper).
SIZES = {
    "Tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "Small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "Base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}

# The exact (erf) GELU, as torch.nn.GELU() and Keras's "gelu"; jax.nn.gelu defaults to the tanh one.
gelu = functools.partial(jax.nn.gelu, approximate=False)


class ConvNeXtBlock(nnx.Module):
    """ConvNeXt's block: 7x7 depthwise, layer norm, 1x1 to 4x, GELU, 1x1 back, layer scale, residual.

    Submodules: ``depthwise`` (:class:`jdw.nnx.DepthwiseConv` with bias), ``norm``
    (``nnx.LayerNorm``), ``fc1`` and ``fc2`` (``nnx.Linear``), and the parameter
    ``layer_scale`` (``(C,)``, initialised to ``layer_scale_init``). In training the
    residual branch is dropped per example with probability ``stochastic_depth_rate``.

    Args:
      features: channels ``C``.
      kernel_size: depthwise window (7 in the paper).
      expansion: width of the hidden layer, in multiples of ``C``.
      layer_scale_init: initial value of the per-channel scale; ``None`` for no layer scale.
      stochastic_depth_rate: probability of dropping the residual branch in training.
      norm_epsilon: epsilon of the layer norm.
      implementation: backend of the depthwise convolution.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      rngs: random number generators.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jdw.models.convnext import ConvNeXtBlock
      >>> block = ConvNeXtBlock(96, rngs=nnx.Rngs(0))
      >>> block.depthwise.kernel.shape, block(jnp.ones((1, 14, 14, 96))).shape
      ((7, 7, 1, 96), (1, 14, 14, 96))
    """

    def __init__(
        self,
        features: int,
        *,
        kernel_size: int = 7,
        expansion: int = 4,
        layer_scale_init: float | None = 1e-6,
        stochastic_depth_rate: float = 0.0,
        norm_epsilon: float = 1e-6,
        implementation: str | None = None,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        params = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.depthwise = DepthwiseConv(
            features, kernel_size, padding="SAME", use_bias=True, implementation=implementation, **params
        )
        self.norm = nnx.LayerNorm(features, epsilon=norm_epsilon, **params)
        self.fc1 = nnx.Linear(features, expansion * features, **params)
        self.fc2 = nnx.Linear(expansion * features, features, **params)
        self.layer_scale = (
            nnx.Param(jnp.full((features,), layer_scale_init, param_dtype)) if layer_scale_init else nnx.data(None)
        )
        self.drop_path = (
            nnx.Dropout(stochastic_depth_rate, broadcast_dims=(1, 2, 3), rngs=rngs)
            if stochastic_depth_rate > 0
            else None
        )
        self.features = features

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies the block to channels-last images ``(N, H, W, C)``."""
        x = jnp.asarray(x)
        common.check_input("ConvNeXtBlock", x, 2, "channels_last", self.features)
        y = self.fc2(gelu(self.fc1(self.norm(self.depthwise(x)))))
        if self.layer_scale is not None:
            y = y * self.layer_scale[...].astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        if self.drop_path is not None:
            y = self.drop_path(y)
        return x.astype(y.dtype) + y


class NormConv(nnx.Module):
    """A layer norm then a convolution (``norm_first``, ConvNeXt's downsampling) or the reverse (its stem).

    Args:
      in_features: input channels.
      out_features: output channels.
      kernel_size: window, equal to the stride (non-overlapping patches).
      norm_first: normalise the input (downsampling) rather than the output (stem).
      norm_epsilon: epsilon of the layer norm.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      rngs: random number generators.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jdw.models.convnext import NormConv
      >>> NormConv(96, 192, 2, rngs=nnx.Rngs(0))(jnp.ones((1, 56, 56, 96))).shape
      (1, 28, 28, 192)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        norm_first: bool = True,
        norm_epsilon: float = 1e-6,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        params = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = nnx.LayerNorm(in_features if norm_first else out_features, epsilon=norm_epsilon, **params)
        self.conv = nnx.Conv(
            in_features, out_features, (kernel_size, kernel_size), strides=kernel_size, padding="VALID", **params
        )
        self.norm_first = norm_first

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies norm and convolution in the configured order."""
        return self.conv(self.norm(x)) if self.norm_first else self.norm(self.conv(x))


class _ConvNeXt(ConvNet):
    SIZE = "Tiny"

    def __init__(
        self,
        num_classes: int | None = 1000,
        *,
        width: float = 1.0,
        in_features: int = 3,
        dropout: float = 0.0,
        small_inputs: bool = False,
        input_rescaling: tuple | None = None,
        stochastic_depth_rate: float = 0.0,
        layer_scale_init: float | None = 1e-6,
        norm_epsilon: float = 1e-6,
        implementation: str | None = None,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        check_model_args(name, num_classes, width, min_width=1 / 96, stochastic_depth_rate=stochastic_depth_rate)
        depths, dims = SIZES[self.SIZE]
        dims = [max(1, round(d * width)) for d in dims]
        params = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        patch = 2 if small_inputs else 4
        stem = NormConv(in_features, dims[0], patch, norm_first=False, norm_epsilon=norm_epsilon, **params)
        blocks, strides, index, total = [], [], 0, sum(depths)
        for stage, (depth, dim) in enumerate(zip(depths, dims)):
            if stage:
                blocks.append(NormConv(dims[stage - 1], dim, 2, norm_epsilon=norm_epsilon, **params))
                strides.append(2)
            for _ in range(depth):
                rate = stochastic_depth_rate * index / max(total - 1, 1)
                blocks.append(
                    ConvNeXtBlock(
                        dim,
                        layer_scale_init=layer_scale_init,
                        stochastic_depth_rate=rate,
                        norm_epsilon=norm_epsilon,
                        implementation=implementation,
                        **params,
                    )  # fmt: skip
                )
                strides.append(1)
                index += 1
        super().__init__(
            stem=stem,
            stem_strides=patch,
            blocks=blocks,
            block_strides=strides,
            # The last layer norm: over the pooled features before the classifier, or over every
            # position of the last map without one (Keras's include_top=False).
            head=None if num_classes else nnx.LayerNorm(dims[-1], epsilon=norm_epsilon, **params),
            pre_logits=nnx.LayerNorm(dims[-1], epsilon=norm_epsilon, **params) if num_classes else None,
            pre_logits_activation=None,
            dropout=nnx.Dropout(dropout, rngs=rngs),
            classifier=nnx.Linear(dims[-1], num_classes, **params) if num_classes else None,
            in_features=in_features,
            num_classes=num_classes,
            width=width,
            input_rescaling=input_rescaling,
            min_input_size=patch * 8,
        )


_DOC = """ConvNeXt-{size}: a ResNet modernised with 7x7 depthwise convolutions, layer norm and GELU.

    Stages of {depths} blocks with {dims} channels. With 1000 classes it has {params}
    trainable parameters, those of ``keras.applications.ConvNeXt{size}`` and
    ``torchvision.models.convnext_{lower}``. Built as both build it: a 4x4 stride-4 stem
    conv and layer norm; per stage a layer norm and 2x2 stride-2 conv (after the first),
    then blocks (:class:`~jdw.models.convnext.ConvNeXtBlock`) with layer scale 1e-6 and
    stochastic depth rising linearly from 0 to ``stochastic_depth_rate``; global average
    pooling, layer norm, classifier. Layer norms use epsilon 1e-6, GELU is the exact one.
    Keras's built-in preprocessing (ImageNet mean and standard deviation on [0, 255]
    pixels) is not part of the model: pass it as ``input_rescaling``
    (:func:`jdw.models.from_keras` does).

    Args:
      num_classes: classifier outputs; ``None`` drops pooling and the classifier
        (``__call__`` then returns the last feature map, layer-normalised at every
        position, as Keras's ``include_top=False`` model does).
      width: channel multiplier.
      in_features: input channels.
      dropout: dropout before the classifier (0 in the paper).
      small_inputs: a 2x2 stride-2 stem instead of 4x4 stride 4 (for 32x32 images); the
        total stride becomes 16.
      input_rescaling: optional ``(scale, offset)`` applied to the images first (floats,
        or one value per channel).
      stochastic_depth_rate: drop rate of the last block's residual branch (0.1 for
        Tiny, 0.4 for Small, 0.5 for Base in the paper's ImageNet training).
      layer_scale_init: initial per-channel scale of every block's branch; ``None`` for none.
      norm_epsilon: epsilon of the layer norms.
      implementation: backend of every depthwise convolution.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      rngs: random number generators (``params``; ``dropout`` for training).

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> model = jdw.models.ConvNeXt{size}(num_classes=10, width=0.25, rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> model(jnp.zeros((1, 64, 64, 3))).shape
      (1, 10)

    References:
      Liu et al., *A ConvNet for the 2020s*, CVPR 2022.
    """


def _doc(size: str, params: str) -> str:
    depths, dims = SIZES[size]
    doc = _DOC.format(size=size, lower=size.lower(), depths=depths, dims=dims, params=params)
    return doc if size == "Tiny" else example_of(doc, "ConvNeXtTiny")


class ConvNeXtTiny(_ConvNeXt):
    __doc__ = _doc("Tiny", "28,589,128")
    SIZE = "Tiny"


class ConvNeXtSmall(_ConvNeXt):
    __doc__ = _doc("Small", "50,223,688")
    SIZE = "Small"


class ConvNeXtBase(_ConvNeXt):
    __doc__ = _doc("Base", "88,591,464")
    SIZE = "Base"
