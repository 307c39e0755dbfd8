"""What jdw's image models share: stem, a list of blocks, an optional head, pooling and classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from jdw import _layer_common as common
from jdw.functional.activations import get_activation
from jdw.typing import ActivationLike


def example_of(doc: str, first: str) -> str:
    """``doc`` with its Examples section pointing at the family's first member ``first``.

    The larger members of a family are built and called exactly as the first one is; running each
    one's example would build every large model op by op in the doctests.
    """
    head, examples = doc.split("    Examples:\n", 1)
    rest = examples.split("\n\n", 1)[1]
    return f"{head}    Examples:\n      Built and called as :class:`{first}` is (see its example).\n\n{rest}"


def check_model_args(model: str, num_classes, width, *, min_width: float = 0.0, stochastic_depth_rate=0.0) -> None:
    """``num_classes``: a positive int or ``None`` (no classifier); ``width``: a positive finite number;
    ``stochastic_depth_rate`` in [0, 1).

    Raises:
      ValueError: naming the argument and its value.
    """
    if num_classes is not None and (
        not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1
    ):
        raise ValueError(
            f"{model}: num_classes must be a positive int, or None for no classifier, got num_classes={num_classes!r}"
        )
    if (
        not isinstance(width, (int, float, np.integer, np.floating))
        or isinstance(width, bool)
        or not math.isfinite(width)
        or width <= 0
    ):
        raise ValueError(f"{model}: width must be a positive number, got width={width!r}")
    if width < min_width:
        raise ValueError(f"{model}: width={width!r} leaves a layer with no channels; use width >= {min_width:g}")
    if not 0.0 <= stochastic_depth_rate < 1.0:
        raise ValueError(
            f"{model}: stochastic_depth_rate must be in [0, 1), got stochastic_depth_rate={stochastic_depth_rate!r}"
        )


PADDINGS = ("SAME", "SYMMETRIC")


def check_padding(model: str, padding: str) -> str:
    """A model's ``padding``: ``"SAME"`` (Keras/TensorFlow) or ``"SYMMETRIC"`` (PyTorch)."""
    if not isinstance(padding, str) or padding.upper() not in PADDINGS:
        raise ValueError(f"{model}: padding must be one of {PADDINGS}, got padding={padding!r}")
    return padding.upper()


def layer_padding(padding: str, kernel_size: int) -> str | int:
    """The padding of one ``kernel_size`` layer of a model built with ``padding``.

    ``"SAME"`` pads as TensorFlow and Keras do (at stride 2 on an even size the extra row
    and column go at the bottom and right); ``"SYMMETRIC"`` pads ``(k - 1) // 2`` on both
    sides, as PyTorch models do. At stride 1 with odd kernels the two are the same.
    """
    return "SAME" if padding == "SAME" else (kernel_size - 1) // 2


class ConvNet(nnx.Module):
    """Base class of jdw's image models: the forward pass, feature maps and input checks.

    A subclass builds its layers and hands them to this ``__init__``; everything else
    (``__call__``, :meth:`features`, :attr:`total_stride`, the input checks) lives here.

    Args:
      stem: the first layer, applied to the (rescaled) images.
      stem_strides: the stem's stride.
      blocks: the blocks after the stem, in order.
      block_strides: each block's stride (the feature maps of :meth:`features` are taken
        before every block of stride above 1).
      head: a last layer after the blocks (MobileNetV2's and V3's 1x1 conv-norm-act,
        Xception's exit flow), or ``None``.
      pre_logits: a layer between pooling and the classifier (MobileNetV3's dense layer,
        ConvNeXt's layer norm), or ``None``.
      pre_logits_activation: the activation after ``pre_logits``.
      dropout: the dropout before the classifier.
      classifier: the last dense layer, or ``None`` without top (``__call__`` then returns
        the last feature map).
      in_features: the images' channels.
      num_classes: the classifier's outputs, or ``None``.
      width: the width multiplier the model was built with.
      input_rescaling: optional ``(scale, offset)`` applied to the images first, each a
        float or one value per channel.
      min_input_size: the smallest image side accepted (``None``: 1).
    """

    def __init__(
        self,
        *,
        stem: nnx.Module,
        stem_strides: int,
        blocks: Sequence[nnx.Module],
        block_strides: Sequence[int],
        head: nnx.Module | None,
        pre_logits: nnx.Module | None,
        pre_logits_activation: ActivationLike,
        dropout: nnx.Dropout,
        classifier: nnx.Module | None,
        in_features: int,
        num_classes: int | None,
        width: float,
        input_rescaling: tuple[float, float] | None,
        min_input_size: int | None = None,
    ):
        if len(blocks) != len(block_strides):
            raise ValueError(f"{type(self).__name__}: {len(blocks)} blocks but {len(block_strides)} block strides")
        self.stem = stem
        self.stem_strides = stem_strides
        self.blocks = nnx.List(blocks)
        self.block_strides = tuple(block_strides)
        self.head = head
        self.pre_logits = pre_logits
        self.pre_logits_activation = pre_logits_activation
        self.dropout = dropout
        self.classifier = classifier
        self.in_features = in_features
        self.num_classes = num_classes
        self.width = width
        self.input_rescaling = input_rescaling
        self.min_input_size = 1 if min_input_size is None else min_input_size

    def _check_input(self, x: jax.Array) -> None:
        name = type(self).__name__
        if x.ndim != 4:
            raise ValueError(f"{name}: expected images of shape (N, H, W, C), got x.shape={tuple(x.shape)}")
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{name}: in_features={self.in_features} but the images have {x.shape[-1]} channels "
                f"(x.shape={tuple(x.shape)}, layout NHWC)"
            )
        if min(x.shape[1:3]) < self.min_input_size:
            raise ValueError(
                f"{name}: images must be at least {self.min_input_size}x{self.min_input_size} for its strides, "
                f"got {x.shape[1]}x{x.shape[2]}"
            )

    def _trunk(self, x: ArrayLike) -> tuple[jax.Array, dict[int, jax.Array]]:
        x = jnp.asarray(x)
        self._check_input(x)
        if self.input_rescaling is not None:
            scale, offset = (jnp.asarray(v, x.dtype) for v in self.input_rescaling)
            if scale.ndim:  # one value per channel
                scale, offset = (v.reshape((1,) * (x.ndim - 1) + (-1,)) for v in (scale, offset))
            x = x * scale + offset
        x = self.stem(x)
        stride, features = self.stem_strides, {}
        for block, block_stride in zip(self.blocks, self.block_strides):
            if block_stride > 1:
                features[stride] = x
                stride *= block_stride
            x = block(x)
        features[stride] = x
        return x, features

    def features(self, x: ArrayLike) -> dict[int, jax.Array]:
        """The multi-scale feature maps a detection or segmentation head needs.

        Args:
          x: images ``(N, H, W, C)``.

        Returns:
          ``{stride: feature map}``: for every output stride (2, 4, 8, 16, 32 by default),
          the output of the last block at that resolution, before the head.
        """
        return self._trunk(x)[1]

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Logits ``(N, num_classes)``; without a classifier (``num_classes=None``) the last feature map."""
        x, _ = self._trunk(x)
        if self.head is not None:
            x = self.head(x)
        if self.classifier is None:
            return x
        x = common.mean_over_spatial(x, 2, "channels_last")[:, 0, 0, :]
        if self.pre_logits is not None:
            x = get_activation(self.pre_logits_activation)(self.pre_logits(x))
        return self.classifier(self.dropout(x))

    @property
    def total_stride(self) -> int:
        """Ratio of the input size to the last feature map's size."""
        stride = self.stem_strides
        for s in self.block_strides:
            stride *= s
        return stride
