"""Xception (Chollet, 2017), as Keras applications builds it."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike, DTypeLike

from jdw import _layer_common as common
from jdw.models._base import ConvNet, check_model_args
from jdw.nnx import ConvNormAct, SeparableConv

# Output channels of each separable convolution in the entry, middle and exit flows'
# residual blocks (Figure 5 of the paper); the middle block repeats eight times.
ENTRY = ((128, 128), (256, 256), (728, 728))
MIDDLE = (728, 728, 728)
EXIT = (728, 1024)


class SeparableNorm(nnx.Module):
    """[ReLU], a depthwise-separable convolution without bias, batch norm: Xception's unit.

    Submodules ``conv`` (:class:`jdw.nnx.SeparableConv`) and ``norm``.

    Args:
      in_features: input channels.
      out_features: output channels.
      relu_first: apply ReLU to the input first (every unit but the first of the entry flow).
      norm_momentum: momentum of the batch norm.
      norm_epsilon: epsilon of the batch norm.
      implementation: backend of the depthwise convolution.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      rngs: random number generators.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jdw.models.xception import SeparableNorm
      >>> SeparableNorm(64, 128, rngs=nnx.Rngs(0))(jnp.ones((1, 8, 8, 64))).shape
      (1, 8, 8, 128)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        relu_first: bool = True,
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        implementation: str | None = None,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        params = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv = SeparableConv(in_features, out_features, 3, use_bias=False, implementation=implementation, **params)
        self.norm = nnx.BatchNorm(out_features, momentum=norm_momentum, epsilon=norm_epsilon, **params)
        self.relu_first = relu_first

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies [ReLU], the separable convolution and the norm."""
        x = jnp.asarray(x)
        return self.norm(self.conv(jax.nn.relu(x) if self.relu_first else x))


class XceptionBlock(nnx.Module):
    """Xception's residual block: separable conv-norm units, an optional 3x3 stride-2 max pool, a shortcut.

    The shortcut is the input itself, or, when the block downsamples or changes the
    width, a 1x1 stride-2 conv-norm (``shortcut``). Submodules ``units`` and ``shortcut``.

    Args:
      in_features: input channels.
      features: output channels of each separable unit.
      strides: 2 for a max-pooled block (entry and exit flows), 1 for the middle flow.
      relu_first: whether the first unit starts with ReLU (not in the first entry block).
      rngs: random number generators.
      **kwargs: passed to every :class:`SeparableNorm` (norm options, dtypes, implementation).

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jdw.models.xception import XceptionBlock
      >>> XceptionBlock(64, (128, 128), strides=2, rngs=nnx.Rngs(0))(jnp.ones((1, 16, 16, 64))).shape
      (1, 8, 8, 128)
    """

    def __init__(
        self,
        in_features: int,
        features: Sequence[int],
        *,
        strides: int = 2,
        relu_first: bool = True,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        conv_options = {k: v for k, v in kwargs.items() if k != "implementation"}
        self.shortcut = (
            ConvNormAct(in_features, features[-1], 1, strides=strides, activation=None, rngs=rngs, **conv_options)
            if strides != 1 or in_features != features[-1]
            else None
        )
        units, channels = [], in_features
        for index, out in enumerate(features):
            units.append(SeparableNorm(channels, out, relu_first=relu_first or index > 0, rngs=rngs, **kwargs))
            channels = out
        self.units = nnx.List(units)
        self.strides = strides
        self.in_features = in_features

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies the block to channels-last images."""
        x = jnp.asarray(x)
        common.check_input("XceptionBlock", x, 2, "channels_last", self.in_features)
        y = x
        for unit in self.units:
            y = unit(y)
        if self.strides != 1:
            y = nnx.max_pool(y, (3, 3), strides=(self.strides, self.strides), padding="SAME")
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return y + shortcut.astype(y.dtype)


class ExitHead(nnx.Module):
    """The end of Xception's exit flow: separable conv-norm-ReLU units to 1536 and 2048 channels.

    Args:
      in_features: input channels.
      features: output channels of each unit.
      rngs: random number generators.
      **kwargs: passed to every :class:`SeparableNorm`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jdw.models.xception import ExitHead
      >>> ExitHead(64, (96, 128), rngs=nnx.Rngs(0))(jnp.ones((1, 4, 4, 64))).shape
      (1, 4, 4, 128)
    """

    def __init__(self, in_features: int, features: Sequence[int] = (1536, 2048), *, rngs: nnx.Rngs, **kwargs):
        units, channels = [], in_features
        for out in features:
            units.append(SeparableNorm(channels, out, relu_first=False, rngs=rngs, **kwargs))
            channels = out
        self.units = nnx.List(units)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Applies every unit, each followed by ReLU."""
        for unit in self.units:
            x = jax.nn.relu(unit(x))
        return x


class Xception(ConvNet):
    """Xception: the network the depthwise-separable idea is named for ("extreme Inception").

    With 1000 classes it has 22,855,952 trainable parameters, those of
    ``keras.applications.Xception``. Built as Keras builds it: entry flow (two 3x3 convs,
    the first of stride 2, both unpadded; three residual blocks of separable convolutions
    with max pooling), middle flow (eight residual blocks of three separable convolutions
    at 728 channels), exit flow (one more pooled block, then separable convolutions to 1536
    and 2048 channels), global average pooling and the classifier. Batch norms use Keras's
    momentum 0.99 and epsilon 1e-3. Keras's preprocessing is ``x / 127.5 - 1`` for pixels
    in [0, 255] (``input_rescaling=(1 / 127.5, -1.0)``).

    Args:
      num_classes: classifier outputs; ``None`` drops pooling and classifier (``__call__``
        then returns the last feature map, 2048 channels at width 1).
      width: channel multiplier of every layer.
      in_features: input channels.
      dropout: dropout before the classifier (none in Keras).
      small_inputs: stride 1 instead of 2 in the first convolution (for 32x32 images); the
        total stride becomes 16.
      input_rescaling: optional ``(scale, offset)`` applied to the images first.
      middle_blocks: number of middle-flow blocks (8 in the paper).
      norm_momentum: momentum of the batch norms' running statistics.
      norm_epsilon: epsilon of the batch norms.
      implementation: backend of every depthwise convolution.
      dtype: dtype of the computation.
      param_dtype: dtype of the parameters.
      rngs: random number generators.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from flax import nnx
      >>> model = jdw.models.Xception(num_classes=10, width=0.25, rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> model(jnp.zeros((1, 71, 71, 3))).shape
      (1, 10)

    References:
      Chollet, *Xception: Deep Learning with Depthwise Separable Convolutions*, CVPR 2017.
    """

    def __init__(
        self,
        num_classes: int | None = 1000,
        *,
        width: float = 1.0,
        in_features: int = 3,
        dropout: float = 0.0,
        small_inputs: bool = False,
        input_rescaling: tuple | None = None,
        middle_blocks: int = 8,
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        implementation: str | None = None,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_model_args("Xception", num_classes, width, min_width=1 / 32)
        common.check_positive_int("Xception", middle_blocks=middle_blocks)

        def w(c):
            return max(1, round(c * width))

        shared = dict(norm_momentum=norm_momentum, norm_epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype)
        units = dict(implementation=implementation, **shared)
        stem_strides = 1 if small_inputs else 2
        stem = nnx.Sequential(
            ConvNormAct(in_features, w(32), 3, strides=stem_strides, padding="VALID", rngs=rngs, **shared),
            ConvNormAct(w(32), w(64), 3, padding="VALID", rngs=rngs, **shared),
        )
        blocks, channels = [], w(64)
        for index, features in enumerate(ENTRY):
            features = [w(c) for c in features]
            blocks.append(XceptionBlock(channels, features, relu_first=index > 0, rngs=rngs, **units))
            channels = features[-1]
        for _ in range(middle_blocks):
            blocks.append(XceptionBlock(channels, [w(c) for c in MIDDLE], strides=1, rngs=rngs, **units))
        blocks.append(XceptionBlock(channels, [w(c) for c in EXIT], rngs=rngs, **units))
        head_features = (w(1536), w(2048))
        super().__init__(
            stem=stem,
            stem_strides=stem_strides,
            blocks=blocks,
            block_strides=[2, 2, 2, *([1] * middle_blocks), 2],
            head=ExitHead(w(EXIT[-1]), head_features, rngs=rngs, **units),
            pre_logits=None,
            pre_logits_activation=None,
            dropout=nnx.Dropout(dropout, rngs=rngs),
            classifier=(
                nnx.Linear(head_features[-1], num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                if num_classes
                else None
            ),
            in_features=in_features,
            num_classes=num_classes,
            width=width,
            input_rescaling=input_rescaling,
            min_input_size=32 if small_inputs else 71,
        )
