"""Pure functions for depthwise, pointwise and depthwise-separable convolution."""

from jdw.functional.activations import get_activation
from jdw.functional.causal import causal_conv1d, causal_conv1d_update, ordered_state
from jdw.functional.depthwise import depthwise_conv
from jdw.functional.normalization import batch_norm_act
from jdw.functional.pointwise import pointwise_conv
from jdw.functional.separable import separable_conv
from jdw.functional.transpose import depthwise_conv_transpose

__all__ = [
    "batch_norm_act",
    "causal_conv1d",
    "causal_conv1d_update",
    "ordered_state",
    "depthwise_conv",
    "depthwise_conv_transpose",
    "get_activation",
    "pointwise_conv",
    "separable_conv",
]
