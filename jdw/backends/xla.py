"""The reference backend: XLA's grouped convolution (``lax.conv_general_dilated``).

Always available. On GPU it is cuDNN's grouped convolution; on CPU it is slow
(see ``python -m jdw.bench``), which is why ``"taps"`` exists.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jdw.backends import registry
from jdw.geometry import Geometry


def _dimension_numbers(num_spatial: int) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, num_spatial + 1))
    feature = num_spatial + 1
    lhs = (0, feature, *spatial)
    rhs = (num_spatial + 1, num_spatial, *range(num_spatial))
    return lax.ConvDimensionNumbers(lhs_spec=lhs, rhs_spec=rhs, out_spec=lhs)


def _out_sharding(x: jax.Array, kernel: jax.Array) -> jax.sharding.PartitionSpec | None:
    """Under a mesh with explicit axes, the output keeps x's batch and channel sharding.

    Depthwise channels are independent, so a channel axis sharded on ``x`` or the kernel
    stays sharded; XLA cannot infer this for a grouped convolution and asks for it.
    """
    if not registry.explicit_mesh(jax.sharding.get_abstract_mesh()):
        return None
    batch, channels = registry.sharded_axes(x, kernel)
    return jax.sharding.PartitionSpec(batch, *(None,) * (x.ndim - 2), channels)


def conv(x, kernel, geometry: Geometry, *, precision=None, preferred_element_type=None) -> jax.Array:
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=geometry.strides,
        padding=geometry.padding,
        lhs_dilation=geometry.input_dilation,
        rhs_dilation=geometry.dilation,
        dimension_numbers=_dimension_numbers(geometry.num_spatial),
        feature_group_count=x.shape[-1],
        precision=precision,
        preferred_element_type=preferred_element_type,
        out_sharding=_out_sharding(x, kernel),
    )


def conv_transpose(y, kernel, geometry: Geometry, *, precision=None, preferred_element_type=None) -> jax.Array:
    """Transposed grouped convolution through ``lhs_dilation`` (slow on CPU; kept as the reference)."""
    flipped = lax.rev(kernel, tuple(range(geometry.num_spatial)))
    return conv(y, flipped, geometry.adjoint(), precision=precision, preferred_element_type=preferred_element_type)


def segment_conv(xp, kernel, reach, *, dilation: int, preferred_element_type=None) -> jax.Array:
    """Packed sequences' causal tap sum (:attr:`registry.Backend.segment_conv`) in plain JAX, differentiated by JAX.

    A grouped convolution cannot mask taps per output, so the reference is the masked sum of
    shifted slices written out, with JAX's own derivatives of it.
    """
    width, channels = kernel.shape[0], xp.shape[-1]
    multiplier, pad, length = kernel.shape[-1] // channels, (width - 1) * dilation, reach.shape[1]
    out_dtype = preferred_element_type or jnp.result_type(xp, kernel)
    accumulate = jnp.float64 if jnp.dtype(out_dtype) == jnp.float64 else jnp.float32
    if multiplier > 1:
        xp = jnp.repeat(xp, multiplier, axis=-1)
    total = None
    for i in range(width):
        window = lax.slice_in_dim(xp, i * dilation, i * dilation + length, axis=1).astype(accumulate)
        readable = (reach >= pad - i * dilation)[..., None]
        term = jnp.where(readable, window * kernel[i, 0].astype(accumulate)[None, None], 0)
        total = term if total is None else total + term
    return total.astype(out_dtype)


BACKEND = registry.register(
    registry.Backend(
        name="xla",
        conv=conv,
        conv_transpose=conv_transpose,
        description="lax.conv_general_dilated with feature_group_count (the reference)",
        segment_conv=segment_conv,
    )
)
