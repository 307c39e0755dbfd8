"""Flax Linen layers and MobileNet building blocks built on :mod:`jdw.functional`."""

from jdw.linen.blocks import ConvNormAct, InvertedResidual, SqueezeExcite
from jdw.linen.causal import CausalConv1D
from jdw.linen.conv import DepthwiseConv, PointwiseConv, SeparableConv

__all__ = [
    "CausalConv1D",
    "ConvNormAct",
    "DepthwiseConv",
    "InvertedResidual",
    "PointwiseConv",
    "SeparableConv",
    "SqueezeExcite",
]
