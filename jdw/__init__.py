"""jdw: depthwise and depthwise-separable convolution for JAX."""

from jdw import backends, cost, geometry, initializers, linen, models, nnx
from jdw.functional import (
    causal_conv1d,
    causal_conv1d_update,
    depthwise_conv,
    depthwise_conv_transpose,
    ordered_state,
    pointwise_conv,
    separable_conv,
)

__version__ = "0.1.0"

__all__ = [
    "backends",
    "cost",
    "geometry",
    "initializers",
    "linen",
    "models",
    "nnx",
    "causal_conv1d",
    "causal_conv1d_update",
    "ordered_state",
    "depthwise_conv",
    "depthwise_conv_transpose",
    "pointwise_conv",
    "separable_conv",
]
