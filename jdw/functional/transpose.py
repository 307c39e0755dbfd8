"""Transposed (upsampling) depthwise convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from jdw import geometry as geometry_lib
from jdw.backends import registry
from jdw.functional import _arguments as args_lib
from jdw.geometry import Geometry
from jdw.typing import DataFormat, PaddingLike


def transposed_output_size(n: int, kernel: int, stride: int, dilation: int, padding: str | tuple[int, int]) -> int:
    """Output length of :func:`depthwise_conv_transpose` along one dimension, before ``output_padding``.

    ``padding`` is ``"SAME"``, ``"VALID"`` or a ``(low, high)`` pair.
    """
    ke = geometry_lib.span(kernel, dilation)
    if isinstance(padding, str):
        return n * stride if padding.upper() == "SAME" else (n - 1) * stride + ke
    return (n - 1) * stride + ke - padding[0] - padding[1]


def depthwise_conv_transpose(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    strides: int | tuple[int, ...] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | tuple[int, ...] = 1,
    output_padding: int | tuple[int, ...] = 0,
    data_format: DataFormat = "channels_last",
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    implementation: str | None = None,
) -> jax.Array:
    """Transposed depthwise convolution, as PyTorch's ``ConvTranspose(groups=C)``.

    Input channel ``c`` spreads into output channels ``c * M + m``, each through its own
    kernel. With ``M = 1`` this is exactly the adjoint (the gradient with respect to its
    input) of :func:`jdw.depthwise_conv` called with the same kernel, ``strides``,
    ``padding`` and ``dilation`` — which is how ``padding`` is read here: it is the
    padding of the forward convolution being transposed, so the output length per
    dimension is

    * ``"SAME"``: ``n * stride`` (TensorFlow/Keras ``Conv2DTranspose(padding="same")``);
    * ``"VALID"``: ``(n - 1) * stride + dilation * (k - 1) + 1``;
    * ``(low, high)`` pairs or an int ``p``: ``(n - 1) * stride + dilation * (k - 1) + 1 - low - high``
      (PyTorch's ``padding=p``);

    plus ``output_padding`` (``< stride``), which resolves which of the input sizes a
    strided convolution maps to ``n`` is meant, as in PyTorch. The implementation never
    dilates the input with zeros through ``lhs_dilation``, which XLA runs slowly on CPU.

    So the adjoint holds for the forward convolution of an input of that output length.
    With ``"SAME"`` that is ``n * stride``: a ``"SAME"`` convolution of an input whose
    length is not a multiple of the stride (7 with stride 2 gives 4, and 4 transposes to
    8) is transposed exactly by passing its explicit padding instead, here ``((1, 1),)``
    for kernel 3 (7 again), with ``output_padding`` to pick among the lengths a stride
    maps to the same ``n``.

    Args:
      x: ``(N, *spatial, C)`` (or channels first, or unbatched).
      kernel: ``(*kernel_spatial, 1, C * M)``, the layout of :func:`jdw.depthwise_conv`.
      bias: optional ``(C * M,)``.
      strides: upsampling factor, int or one per spatial dimension.
      padding: ``"SAME"``, ``"VALID"``, an int or per-dimension ints / ``(low, high)`` pairs.
      dilation: kernel dilation.
      output_padding: extra output elements on the high side, int or one per dimension.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      precision: see :func:`jdw.depthwise_conv`.
      preferred_element_type: see :func:`jdw.depthwise_conv`.
      implementation: see :func:`jdw.depthwise_conv`.

    Returns:
      ``(N, *out_spatial, C * M)``.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> x = jnp.ones((1, 7, 7, 16))
      >>> jdw.depthwise_conv_transpose(x, jnp.ones((3, 3, 1, 16)), strides=2).shape
      (1, 14, 14, 16)
    """
    op = "depthwise_conv_transpose"
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    nd = kernel.ndim - 2
    x, unbatched = args_lib.canonical_input(x, nd, data_format, op=op, kernel_shape=tuple(kernel.shape))
    nd, _, _, kernel_size = args_lib.check_kernel(x, kernel, op=op, data_format=data_format)
    strides = args_lib.as_tuple(strides, nd, "strides")
    dilation = args_lib.as_tuple(dilation, nd, "dilation")
    is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))  # noqa: E731
    if is_int(output_padding):
        output_padding = (int(output_padding),) * nd
    try:
        output_padding = tuple(output_padding)
    except TypeError:
        raise TypeError(
            f"{op}: output_padding must be an int or one int per spatial dimension, got {output_padding!r}"
        ) from None
    if not all(is_int(p) for p in output_padding):
        raise TypeError(f"{op}: output_padding must hold ints, got output_padding={output_padding!r}")
    if len(output_padding) != nd or any(not (0 <= p < s) for p, s in zip(output_padding, strides)):
        raise ValueError(
            f"{op}: output_padding must be one int per spatial dimension with 0 <= output_padding < stride, "
            f"got output_padding={output_padding} and strides={strides}"
        )
    spatial = tuple(x.shape[1:-1])
    if isinstance(padding, str):
        args_lib.check_choice(padding.upper(), ("SAME", "VALID"), "padding")
        base = [
            transposed_output_size(n, k, s, d, padding) for n, k, s, d in zip(spatial, kernel_size, strides, dilation)
        ]
        pads = args_lib.resolve_padding(padding, base, kernel_size, strides, dilation)
    else:
        pads = args_lib.resolve_padding(padding, spatial, kernel_size, strides, dilation)
        base = [
            transposed_output_size(n, k, s, d, p)
            for n, k, s, d, p in zip(spatial, kernel_size, strides, dilation, pads)
        ]
    output_spatial = tuple(b + p for b, p in zip(base, output_padding))
    for dim, (n, out, k, s, d, p) in enumerate(zip(spatial, output_spatial, kernel_size, strides, dilation, pads)):
        if out < 1 or geometry_lib.output_size(out, p, k, s, d) != n:
            raise ValueError(
                f"{op}: along spatial dim {dim}, input size {n} with kernel {k}, stride {s}, dilation {d}, "
                f"padding {p} and output_padding {output_padding[dim]} gives no valid output size "
                f"(got {out}); reduce the padding or output_padding"
            )
    if bias is not None:
        bias = jnp.asarray(bias)
    args_lib.check_bias(bias, kernel.shape[-1])
    args_lib.check_preferred_element_type(preferred_element_type, x, kernel, "depthwise_conv_transpose")
    if implementation is not None:
        registry.get(implementation)
    x, kernel = args_lib.cast_common(x, kernel)
    geometry = Geometry(output_spatial, kernel_size, strides, pads, dilation)  # of the forward convolution
    y = registry.dispatch(
        implementation,
        registry.conv_transpose,
        x,
        kernel,
        geometry=geometry,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return args_lib.restore_layout(args_lib.add_bias(y, bias), data_format, unbatched)
