"""What the Keras and PyTorch weight importers share: the weight-holding modules in order, and filling them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdw.models._base import ConvNet
from jdw.models.convnext import ConvNeXtBlock, NormConv
from jdw.models.efficientnet import FusedMBConv
from jdw.models.mobilenet_v1 import DepthwiseSeparable
from jdw.models.xception import ExitHead, SeparableNorm, XceptionBlock
from jdw.nnx import ConvNormAct, DepthwiseConv, InvertedResidual, PointwiseConv, SeparableConv, SqueezeExcite

Source = Literal["keras", "torch"]
# Modules whose weights one Keras layer or one PyTorch module holds (a SeparableConv: Keras's SeparableConv2D).
LEAVES = (nnx.Conv, DepthwiseConv, PointwiseConv, SeparableConv, nnx.BatchNorm, nnx.LayerNorm, nnx.Linear)


class LayerScale:
    """A block's layer-scale parameter, which Keras and PyTorch store apart from its layers."""

    def __init__(self, block: ConvNeXtBlock):
        self.block = block

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.block.layer_scale.shape)


def weight_modules(module, source: Source) -> Iterator:
    """The modules holding weights, in the order ``source`` stores the matching layers.

    Keras's order is that of ``model.layers`` (nested models flattened), PyTorch's that of
    ``state_dict()``. They agree but for ConvNeXt's layer scale (PyTorch stores it before
    the block's layers, Keras after) and Xception's shortcut (Keras lists it after the
    block's separable units).
    """
    if isinstance(module, (*LEAVES, LayerScale)):
        yield module
        return
    if isinstance(module, ConvNet):
        children = [module.stem, *module.blocks, module.head, module.pre_logits, module.classifier]
    elif isinstance(module, nnx.Sequential):
        children = list(module.layers)
    elif isinstance(module, ConvNormAct):
        children = [module.conv, module.norm]
    elif isinstance(module, InvertedResidual):
        children = [module.expand, module.depthwise, module.se, module.project]
    elif isinstance(module, FusedMBConv):
        children = [module.expand, module.project]
    elif isinstance(module, SqueezeExcite):
        children = [module.reduce, module.expand]
    elif isinstance(module, DepthwiseSeparable):
        children = [module.depthwise, module.pointwise]
    elif isinstance(module, NormConv):
        children = [module.norm, module.conv] if module.norm_first else [module.conv, module.norm]
    elif isinstance(module, ConvNeXtBlock):
        scale = [LayerScale(module)] if module.layer_scale is not None else []
        body = [module.depthwise, module.norm, module.fc1, module.fc2]
        children = scale + body if source == "torch" else body + scale
    elif isinstance(module, XceptionBlock):
        children = [*module.units, module.shortcut]
    elif isinstance(module, SeparableNorm):
        children = [module.conv, module.norm]
    elif isinstance(module, ExitHead):
        children = list(module.units)
    else:
        raise TypeError(f"no {source} counterpart for {type(module).__name__}")
    for child in children:
        if child is not None:
            yield from weight_modules(child, source)


def materialize(abstract: nnx.Module) -> nnx.Module:
    """Concrete zeros for an abstract model whose every weight is about to be overwritten.

    Running the initializers instead would compile one random-number program per parameter
    shape (seconds for a large model on CPU), only to throw the numbers away.
    """

    def zeros(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(0) if not x.shape else jax.random.split(jax.random.key(0), x.shape)
        return jnp.zeros(x.shape, x.dtype)

    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(zeros, state))


def assign(variable: nnx.Variable, value: np.ndarray, where: str) -> None:
    """Sets ``variable`` to ``value``, or says which layer gave the wrong shape."""
    value = np.asarray(value)
    if tuple(variable.shape) != value.shape:
        raise ValueError(
            f"{where} gives a weight of shape {value.shape}, the jdw layer expects {tuple(variable.shape)}"
        )
    variable[...] = jnp.asarray(value, variable.dtype)
