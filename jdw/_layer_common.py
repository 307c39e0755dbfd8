"""What the NNX and Linen layers share: argument normalisation and input checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jdw import geometry
from jdw.backends import registry
from jdw.functional import _arguments as args_lib
from jdw.functional.causal import causal_conv1d, causal_conv1d_update, ordered_state


def kernel_size_tuple(kernel_size: int | Sequence[int], num_spatial_dims: int, layer: str) -> tuple[int, ...]:
    """An int means the same size along ``num_spatial_dims`` axes; a sequence gives the rank."""
    if isinstance(kernel_size, int):
        if num_spatial_dims < 1:
            raise ValueError(f"{layer}: num_spatial_dims must be positive, got {num_spatial_dims}")
        return args_lib.as_tuple(kernel_size, num_spatial_dims, "kernel_size")
    kernel_size = tuple(kernel_size)
    if not kernel_size:
        raise ValueError(f"{layer}: kernel_size must not be empty")
    return args_lib.as_tuple(kernel_size, len(kernel_size), "kernel_size")


def check_conv_options(
    layer: str,
    kernel_size: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: args_lib.PaddingLike = "VALID",
    padding_mode: str = "zeros",
    dilation: int | Sequence[int] = 1,
    data_format: str = "channels_last",
    implementation: str | None = None,
) -> None:
    """Refuses at construction what the first call would refuse: the same checks and messages, named by layer."""
    nd = len(kernel_size)
    try:
        strides = args_lib.as_tuple(strides, nd, "strides")
        dilation = args_lib.as_tuple(dilation, nd, "dilation")
        args_lib.check_choice(padding_mode, args_lib.PADDING_MODES, "padding_mode")
        args_lib.check_choice(data_format, args_lib.DATA_FORMATS, "data_format")
        spans = tuple(geometry.span(k, d) for k, d in zip(kernel_size, dilation))
        args_lib.resolve_padding(padding, spans, kernel_size, strides, dilation)
        if implementation is not None:
            registry.get(implementation)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{layer}: {error}") from None


def channel_axis(ndim: int, num_spatial: int, data_format: str) -> int:
    return ndim - 1 if data_format == "channels_last" else ndim - num_spatial - 1


def feature_axis(num_spatial: int, data_format: str) -> int:
    """The channel axis counted from the end, valid whatever the number of batch axes."""
    return -1 if data_format == "channels_last" else -num_spatial - 1


check_positive_int = args_lib.check_positive_ints  # one rule for every count jdw checks


def check_input(layer: str, x: jax.Array, num_spatial: int, data_format: str, in_features: int | None) -> int:
    """Checks rank and channel count of a layer input; returns the channel count."""
    args_lib.check_choice(data_format, args_lib.DATA_FORMATS, "data_format")
    layout = args_lib.layout_name(num_spatial, data_format)
    if x.ndim < num_spatial + 1:
        raise ValueError(
            f"{layer}: expected an input of rank >= {num_spatial + 1} with {num_spatial} spatial dimension(s) "
            f"(layout {layout}, leading batch axes optional), got x.shape={tuple(x.shape)}"
        )
    channels = x.shape[channel_axis(x.ndim, num_spatial, data_format)]
    if in_features is not None and channels != in_features:
        raise ValueError(
            f"{layer}: in_features={in_features} but the input has {channels} channels "
            f"(x.shape={tuple(x.shape)}, layout {layout})"
        )
    return channels


def with_one_batch_axis(
    x: jax.Array, num_spatial: int, data_format: str
) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
    """Flattens any number of leading batch axes into one; returns ``x`` and the inverse for outputs.

    An input without a batch axis gets one, so the functional ops see ``(N, *spatial, C)``.
    """
    del data_format  # the batch axes lead in both layouts
    batch_shape = x.shape[: x.ndim - num_spatial - 1]
    if len(batch_shape) == 1:
        return x, lambda y: y
    flat = x.reshape((-1, *x.shape[len(batch_shape) :]))
    return flat, lambda y: y.reshape((*batch_shape, *y.shape[1:]))


def spatial_axes(ndim: int, num_spatial: int, data_format: str) -> tuple[int, ...]:
    first = ndim - num_spatial - (1 if data_format == "channels_last" else 0)
    return tuple(range(first, first + num_spatial))


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to the nearest multiple of ``divisor``, losing at most 10%.

    The rule of the MobileNet reference implementations (TensorFlow's ``_make_divisible``,
    torchvision's ``_make_divisible``), used for width multipliers and squeeze sizes.

    Examples:
      >>> from jdw._layer_common import make_divisible
      >>> make_divisible(32 * 0.35), make_divisible(960 * 0.25), make_divisible(20)
      (16, 240, 24)
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def mean_over_spatial(x: jax.Array, num_spatial: int, data_format: str) -> jax.Array:
    """Global average pool that keeps the spatial axes (as size 1), accumulating in float32."""
    axes = spatial_axes(x.ndim, num_spatial, data_format)
    return jnp.mean(x, axis=axes, keepdims=True, dtype=args_lib.promote(x.dtype, jnp.float32)).astype(x.dtype)


def conv_kind(
    in_features: int,
    kernel_size: tuple[int, ...],
    strides: int | Sequence[int],
    groups: int,
    padding: object,
) -> str:
    """Which convolution a conv-norm-act block needs: ``"depthwise"``, ``"pointwise"`` or ``"standard"``."""
    if groups == in_features:
        return "depthwise"
    unit_strides = args_lib.as_tuple(strides, len(kernel_size), "strides") == (1,) * len(kernel_size)
    no_padding = isinstance(padding, str) and padding.upper() in ("SAME", "VALID")
    if groups == 1 and all(k == 1 for k in kernel_size) and unit_strides and no_padding:
        return "pointwise"
    return "standard"


def expanded_width(in_features: int, expand_ratio: float, expanded_features: int | None, layer: str) -> int:
    if expanded_features is None:
        if expand_ratio <= 0:
            raise ValueError(f"{layer}: expand_ratio must be positive, got {expand_ratio}")
        return int(round(in_features * expand_ratio))
    check_positive_int(layer, expanded_features=expanded_features)
    return expanded_features


def residual_allowed(in_features: int, out_features: int, strides: int | Sequence[int], num_spatial: int) -> bool:
    """The input can be added back when the block keeps both the channel count and the spatial size."""
    unit = args_lib.as_tuple(strides, num_spatial, "strides") == (1,) * num_spatial
    return unit and in_features == out_features


def causal_decode(x, state, position, kernel, bias, *, kernel_size, segment_ids, precision, implementation, **run):
    """A ``CausalConv1D`` call in decode mode: ``(y, new_state, new_position)`` continuing from the cache.

    The cached state is a ring buffer whose oldest token is at slot ``position`` (an int32
    scalar). A few tokens (at most a kernel's width, no segments) are a decoding step
    (:func:`jdw.causal_conv1d_update` on the ring buffer: one token's write per row, in place
    where the cache is donated or carried by a loop); anything longer is a prompt, run as a chunk
    of :func:`jdw.causal_conv1d` that starts from the state in order and leaves it in order
    (position 0).
    """
    channels_last = run["data_format"] == "channels_last"
    tokens = x.shape[1] if channels_last else x.shape[-1]
    if tokens <= kernel_size and segment_ids is None:
        y, state = causal_conv1d_update(
            x, state.astype(x.dtype), kernel, bias, position=position, implementation=implementation, **run
        )
        return y, state, (position + tokens) % state.shape[1 if channels_last else 2]
    y, state = causal_conv1d(
        x,
        kernel,
        bias,
        initial_state=ordered_state(state, position, data_format=run["data_format"]),
        return_final_state=True,
        segment_ids=segment_ids,
        precision=precision,
        implementation=implementation,
        **run,
    )
    return y, state, jnp.zeros_like(position)
