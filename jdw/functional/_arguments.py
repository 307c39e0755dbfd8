"""Normalisation and validation of the arguments shared by the functional ops.

Everything public in :mod:`jdw.functional` goes through here once, so that the
backends can trust their inputs: channels-last arrays, a kernel of shape
``(*kernel_spatial, 1, C * M)``, and explicit non-negative zero padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdw import geometry
from jdw.geometry import Geometry
from jdw.typing import PaddingLike

PADDING_STRINGS = ("SAME", "VALID", "CAUSAL")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
DATA_FORMATS = ("channels_last", "channels_first")
_NUMPY_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def layout_name(num_spatial: int, data_format: str) -> str:
    """Returns a layout string such as ``NHWC`` for error messages."""
    spatial = {1: "W", 2: "HW", 3: "DHW"}.get(num_spatial, "S" * num_spatial)
    return f"N{spatial}C" if data_format == "channels_last" else f"NC{spatial}"


def is_positive_int(value) -> bool:
    """jdw's one rule for sizes, strides, counts: an int (Python's or NumPy's), not a bool, at least 1."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 1


def check_positive_ints(where: str, **values) -> None:
    """Raises ``ValueError`` naming the first of ``values`` that is not a positive int (:func:`is_positive_int`)."""
    for name, value in values.items():
        if not is_positive_int(value):
            raise ValueError(f"{where}: {name} must be a positive int, got {name}={value!r}")


def as_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Turns ``value`` (an int or a sequence of ``n`` ints) into an ``n``-tuple of positive ints.

    The entries follow :func:`is_positive_int`.

    Raises:
      TypeError: if ``value`` or an entry is not an int.
      ValueError: if the length is wrong or an entry is below 1.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        values = (int(value),) * n
    else:
        try:
            values = tuple(value)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"{name} must be an int or a sequence of {n} ints, got {value!r}") from None
        if len(values) != n:
            raise ValueError(
                f"{name} must be an int or a sequence of {n} ints (one per spatial dimension), "
                f"got {value!r} of length {len(values)}"
            )
    for v in values:
        if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        if not is_positive_int(v):
            raise ValueError(f"{name} must be positive, got {name}={value!r}")
    return tuple(int(v) for v in values)


def check_choice(value: str, choices: Sequence[str], name: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value


def check_floating(name: str, array: jax.Array) -> None:
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating-point dtype, got {array.dtype}")


def resolve_padding(
    padding: PaddingLike,
    input_spatial: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> tuple[tuple[int, int], ...]:
    """Turns any accepted ``padding`` into explicit ``(low, high)`` pairs, one per spatial dim.

    ``"SAME"`` follows XLA/TensorFlow: output size ``ceil(n / stride)``, the extra
    padding element (if any) on the high side. ``"CAUSAL"`` (1-D only) pads
    ``effective_kernel - 1`` on the low side, so output ``t`` sees inputs ``<= t``.
    """
    nd = len(input_spatial)
    ke = tuple(geometry.span(k, d) for k, d in zip(kernel_size, dilation))
    if isinstance(padding, str):
        mode = padding.upper()
        check_choice(mode, PADDING_STRINGS, "padding")
        if mode == "VALID":
            return ((0, 0),) * nd
        if mode == "CAUSAL":
            if nd != 1:
                raise ValueError(
                    f'padding="CAUSAL" is defined for 1 spatial dimension (sequences), got {nd} spatial dimensions'
                )
            return ((ke[0] - 1, 0),)
        pairs = []
        for n, k, s in zip(input_spatial, ke, strides):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pairs.append((total // 2, total - total // 2))
        return tuple(pairs)
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        pairs = ((int(padding), int(padding)),) * nd
    else:
        try:
            entries = list(padding)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"padding must be a string, an int or a sequence of pairs, got {padding!r}") from None
        if len(entries) != nd:
            raise ValueError(
                f"padding must give one entry per spatial dimension ({nd}), got {padding!r} with {len(entries)}"
            )
        pairs = []
        is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))  # noqa: E731
        for entry in entries:
            if is_int(entry):
                pairs.append((int(entry), int(entry)))
                continue
            try:
                pair = tuple(entry)
            except TypeError:
                pair = ()
            if len(pair) != 2 or not all(is_int(p) for p in pair):
                raise ValueError(
                    f"each padding entry must be an int or a (low, high) pair of ints, got {entry!r} "
                    f"in padding={padding!r}"
                )
            pairs.append((int(pair[0]), int(pair[1])))
        pairs = tuple(pairs)
    for lo, hi in pairs:
        if lo < 0 or hi < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
    return tuple(pairs)


def check_kernel(
    x: jax.Array, kernel: jax.Array, *, op: str, data_format: str
) -> tuple[int, int, int, tuple[int, ...]]:
    """Checks dtypes and the kernel layout against batched channels-last ``x``.

    Returns:
      ``(num_spatial, channels, depth_multiplier, kernel_spatial_size)``.
    """
    check_floating("x", x)
    check_floating("kernel", kernel)
    nd = kernel.ndim - 2
    layout = layout_name(max(nd, 1), data_format)
    if nd < 1:
        raise ValueError(
            f"{op}: kernel must have shape (*kernel_spatial, 1, C * depth_multiplier) with at least one "
            f"spatial dimension, got kernel.shape={tuple(kernel.shape)}"
        )
    channels = x.shape[-1]
    if kernel.shape[-2] != 1:
        raise ValueError(
            f"{op}: kernel must have shape (*kernel_spatial, 1, C * depth_multiplier) as in lax/Flax grouped "
            f"convolution, got kernel.shape={tuple(kernel.shape)} (axis -2 is {kernel.shape[-2]}, expected 1)"
        )
    out_channels = kernel.shape[-1]
    if channels == 0 or out_channels == 0 or out_channels % channels != 0:
        raise ValueError(
            f"{op}: kernel has {out_channels} output channels, which is not a positive multiple of the "
            f"{channels} input channels (layout {layout}); the depth multiplier must be an integer"
        )
    kernel_size = tuple(int(k) for k in kernel.shape[:nd])
    if any(k < 1 for k in kernel_size):
        raise ValueError(f"{op}: kernel spatial sizes must be positive, got kernel.shape={tuple(kernel.shape)}")
    return nd, channels, out_channels // channels, kernel_size


def check_conv_args(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides,
    padding,
    dilation,
    padding_mode: str,
    data_format: str,
    op: str = "depthwise_conv",
) -> Geometry:
    """Validates a depthwise convolution call and returns its geometry (``x`` channels-last and batched)."""
    check_choice(padding_mode, PADDING_MODES, "padding_mode")
    nd, _, _, kernel_size = check_kernel(x, kernel, op=op, data_format=data_format)
    strides = as_tuple(strides, nd, "strides")
    dilation = as_tuple(dilation, nd, "dilation")
    spatial = tuple(x.shape[1:-1])
    pads = resolve_padding(padding, spatial, kernel_size, strides, dilation)
    if padding_mode != "zeros":
        for dim, (n, (lo, hi)) in enumerate(zip(spatial, pads)):
            if padding_mode == "reflect" and max(lo, hi) >= n:
                raise ValueError(
                    f'{op}: padding_mode="reflect" needs padding smaller than the input, but spatial dim {dim} '
                    f"has size {n} and padding ({lo}, {hi})"
                )
            if padding_mode == "circular" and max(lo, hi) > n:
                raise ValueError(
                    f'{op}: padding_mode="circular" needs padding at most the input size, but spatial dim {dim} '
                    f"has size {n} and padding ({lo}, {hi})"
                )
    for dim, (n, k, d, p) in enumerate(zip(spatial, kernel_size, dilation, pads)):
        ke = geometry.span(k, d)
        if n + p[0] + p[1] < ke:
            raise ValueError(
                f"{op}: effective kernel size {ke} (kernel {k}, dilation {d}) is larger than the padded input "
                f"size {n + p[0] + p[1]} (size {n}, padding {p}) along spatial dim {dim}"
            )
    return Geometry(spatial, kernel_size, strides, pads, dilation)


def apply_padding_mode(x: jax.Array, pads: tuple[tuple[int, int], ...], padding_mode: str) -> jax.Array:
    """Pads the spatial dims of channels-last ``x`` in a non-zero ``padding_mode``."""
    width = ((0, 0), *pads, (0, 0))
    return jnp.pad(x, width, mode=_NUMPY_PAD_MODES[padding_mode])


def canonical_input(
    x: jax.Array, num_spatial: int, data_format: str, *, op: str, kernel_shape: tuple[int, ...] | None = None
) -> tuple[jax.Array, bool]:
    """Checks the rank of ``x`` and returns it batched and channels-last, and whether it was unbatched.

    ``x`` may have rank ``num_spatial + 2`` (batched) or ``num_spatial + 1`` (one example).
    """
    check_choice(data_format, DATA_FORMATS, "data_format")
    if x.ndim not in (num_spatial + 1, num_spatial + 2):
        layout = layout_name(num_spatial, data_format)
        source = (
            f"kernel.shape={kernel_shape} has {num_spatial} spatial dimension(s)"
            if kernel_shape
            else (f"{num_spatial} spatial dimension(s)")
        )
        raise ValueError(
            f"{op}: {source}, so x must have rank {num_spatial + 2} (layout {layout}) or {num_spatial + 1} "
            f"(unbatched), got x.shape={tuple(x.shape)}"
        )
    unbatched = x.ndim == num_spatial + 1
    if unbatched:
        x = x[None]
    return to_channels_last(x, data_format), unbatched


def restore_layout(y: jax.Array, data_format: str, unbatched: bool) -> jax.Array:
    """Inverse of :func:`canonical_input` for the output."""
    y = from_channels_last(y, data_format)
    return y[0] if unbatched else y


def add_bias(y: jax.Array, bias: jax.Array | None) -> jax.Array:
    """Adds a per-channel bias to channels-last ``y`` (in ``y``'s dtype)."""
    if bias is None:
        return y
    return y + bias.astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))


def cast_common(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Casts ``x`` and ``kernel`` to their promoted dtype (lax convolutions need one dtype)."""
    dtype = promote(x.dtype, kernel.dtype)
    return x.astype(dtype), kernel.astype(dtype)


def check_preferred_element_type(preferred, x: jax.Array, kernel: jax.Array, op: str) -> None:
    """``lax``'s rule on every path: a floating type at least as wide as the inputs' promoted type.

    Raises:
      TypeError: naming the types, for an integer (or other non-float) type, or a narrower float.
    """
    if preferred is None:
        return
    inputs = promote(x.dtype, kernel.dtype)
    try:
        wanted = np.dtype(jnp.dtype(preferred))
    except TypeError:
        raise TypeError(f"{op}: preferred_element_type must be a dtype, got {preferred!r}") from None
    if not jnp.issubdtype(wanted, jnp.floating):
        raise TypeError(
            f"{op}: preferred_element_type must be a floating type for {inputs} inputs (as in lax), got {wanted}"
        )
    if wanted.itemsize < inputs.itemsize:
        raise TypeError(
            f"{op}: preferred_element_type {wanted} is narrower than the inputs' {inputs} (lax refuses it too); "
            "cast the result instead"
        )


def promote(*dtypes) -> np.dtype:
    """JAX's standard promotion of ``dtypes``, whatever ``jax_numpy_dtype_promotion`` says."""
    with jax.numpy_dtype_promotion("standard"):
        return np.dtype(jnp.result_type(*dtypes))


def to_channels_last(x: jax.Array, data_format: str) -> jax.Array:
    return x if data_format == "channels_last" else jnp.moveaxis(x, 1, -1)


def from_channels_last(y: jax.Array, data_format: str) -> jax.Array:
    return y if data_format == "channels_last" else jnp.moveaxis(y, -1, 1)


def check_bias(bias: jax.Array | None, channels: int, name: str = "bias") -> None:
    if bias is None:
        return
    check_floating(name, bias)
    if bias.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) (one entry per output channel), got {bias.shape}")
