"""Flax NNX layers and MobileNet building blocks built on :mod:`jdw.functional`."""

from jdw.nnx.blocks import ConvNormAct, InvertedResidual, SqueezeExcite
from jdw.nnx.causal import CausalConv1D
from jdw.nnx.conv import DepthwiseConv, PointwiseConv, SeparableConv

__all__ = [
    "CausalConv1D",
    "ConvNormAct",
    "DepthwiseConv",
    "InvertedResidual",
    "PointwiseConv",
    "SeparableConv",
    "SqueezeExcite",
]
