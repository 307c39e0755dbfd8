"""Flax Linen layers and MobileNet building blocks built on :mod:`jdw.functional`."""

from jdw.linen.blocks import ConvNormAct, InvertedResidual, SqueezeExcite
from jdw.linen.conv import DepthwiseConv, PointwiseConv, SeparableConv

__all__ = ["ConvNormAct", "DepthwiseConv", "InvertedResidual", "PointwiseConv", "SeparableConv", "SqueezeExcite"]
