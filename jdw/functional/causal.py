"""Causal depthwise 1-D convolution for sequence models: streaming state and packed sequences.

The convolution of Mamba, Conformer and gated-convolution language models: every channel
of a ``(B, L, D)`` sequence filtered by its own short kernel, each output seeing only the
current and earlier tokens. :func:`causal_conv1d` runs a whole sequence (or a chunk of
one, continuing from the previous chunk's state); :func:`causal_conv1d_update` runs a
decoding step of one or a few tokens against a fixed-size state, kept in order or as a ring
buffer (:func:`ordered_state` puts one back in order).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike, DTypeLike

from jdw.backends import registry
from jdw.functional import _arguments as args_lib
from jdw.functional.activations import get_activation
from jdw.functional.depthwise import depthwise_conv
from jdw.typing import ActivationLike, DataFormat


def state_size(kernel_size: int, dilation: int = 1) -> int:
    """Tokens of the past a causal convolution keeps as state: ``(kernel_size - 1) * dilation``.

    Examples:
      >>> from jdw.functional.causal import state_size
      >>> state_size(4), state_size(31), state_size(3, dilation=2)
      (3, 30, 4)
    """
    return (kernel_size - 1) * dilation


def _channels_last(a: jax.Array | None, data_format: str) -> jax.Array | None:
    return a if a is None or data_format == "channels_last" else jnp.swapaxes(a, 1, 2)


def _check(x, kernel, data_format, dilation, op):
    """Validated ``(x in (B, L, D), kernel (W, 1, D * M), multiplier, dilation, state length)``."""
    args_lib.check_choice(data_format, args_lib.DATA_FORMATS, "data_format")
    (dilation,) = args_lib.as_tuple(dilation, 1, "dilation")
    args_lib.check_floating("x", x)
    args_lib.check_floating("kernel", kernel)
    layout = "(B, L, D)" if data_format == "channels_last" else "(B, D, L)"
    if x.ndim != 3:
        raise ValueError(f"{op}: x must be {layout} ({data_format}), got shape {x.shape}")
    x = _channels_last(x, data_format)
    channels = x.shape[-1]
    if kernel.ndim != 3 or kernel.shape[1] != 1 or kernel.shape[0] < 1 or kernel.shape[2] % channels:
        raise ValueError(
            f"{op}: kernel must be (W, 1, D * M) for D={channels} input channels, got shape {kernel.shape} "
            "(from causal-conv1d's (D, W): kernel.T[:, None, :]; from PyTorch's (D, 1, W): "
            "jnp.transpose(kernel, (2, 1, 0)))"
        )
    return x, kernel.shape[2] // channels, dilation, state_size(kernel.shape[0], dilation)


def _check_state(state, x, pad, data_format, name, op):
    state = jnp.asarray(state)
    layout = (x.shape[0], pad, x.shape[-1]) if data_format == "channels_last" else (x.shape[0], x.shape[-1], pad)
    if pad == 0:
        raise ValueError(f"{op}: a kernel of width 1 keeps no state, so {name} must be None, got shape {state.shape}")
    if state.shape != layout:
        raise ValueError(
            f"{op}: {name} must have shape {layout} (batch, (kernel_size - 1) * dilation, channels"
            f"{', channels first' if data_format == 'channels_first' else ''}) for x of shape "
            f"{x.shape if data_format == 'channels_last' else jnp.swapaxes(x, 1, 2).shape}, got {state.shape}"
        )
    args_lib.check_floating(name, state)
    return _channels_last(state, data_format)


def _segment_reach(segment_ids: jax.Array, pad: int) -> jax.Array:
    """``(B, L)`` int32: how many earlier tokens each position may read.

    A segment is a run of equal ids; a position reads back to its run's start, and the first
    run of a row also reads the state (``pad`` tokens: everything).
    """
    positions = lax.broadcasted_iota(jnp.int32, segment_ids.shape, 1)
    new = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    starts = lax.cummax(jnp.where(new, positions, 0), axis=1)
    return jnp.where(starts > 0, jnp.minimum(positions - starts, pad), pad)


def _tap_sum(xp, kernel, multiplier, dilation, length, dtype):
    """``Σ_i k[i] · xp[t + i·dilation]`` for ``t < length``, accumulated in float32 for 16-bit inputs."""
    acc_dtype = jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
    if multiplier > 1:
        xp = jnp.repeat(xp, multiplier, axis=-1)
    total = None
    for i in range(kernel.shape[0]):
        window = lax.slice_in_dim(xp, i * dilation, i * dilation + length, axis=1).astype(acc_dtype)
        term = window * kernel[i, 0].astype(acc_dtype)[None, None]
        total = term if total is None else total + term
    return total


def causal_conv1d(
    x: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    activation: ActivationLike = None,
    initial_state: ArrayLike | None = None,
    return_final_state: bool = False,
    segment_ids: ArrayLike | None = None,
    dilation: int = 1,
    data_format: DataFormat = "channels_last",
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    implementation: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Causal depthwise 1-D convolution: ``y[b, t, c] = Σ_i x[b, t - (W - 1 - i)·d, c] · k[i, 0, c] + bias[c]``.

    What Dao-AILab's ``causal_conv1d_fn`` computes for Mamba, and the depthwise convolution
    of Conformer and gated-convolution models. A sequence can be processed in chunks:
    ``initial_state`` continues where the previous chunk's ``final_state`` left off, so any
    split of a sequence gives the same output as one call (prefill, then
    :func:`causal_conv1d_update` to decode).

    Args:
      x: ``(B, L, D)``, or ``(B, D, L)`` with ``data_format="channels_first"``.
      kernel: ``(W, 1, D * M)``, jdw's (and Flax's grouped ``Conv``'s) layout; output channel
        ``c * M + m`` reads input channel ``c``. From causal-conv1d's ``(D, W)`` weight:
        ``weight.T[:, None, :]``; from PyTorch's ``Conv1d(groups=D)`` weight ``(D, 1, W)``:
        ``jnp.transpose(weight, (2, 1, 0))``.
      bias: optional ``(D * M,)``.
      activation: applied after the bias: a name (``"silu"``/``"swish"`` for Mamba, ``"relu"``,
        ...) or a callable; fused into the kernel where the backend can (see
        :func:`jdw.depthwise_conv`).
      initial_state: ``(B, (W - 1) * d, D)`` (``(B, D, (W - 1) * d)`` channels first), the last
        inputs of the previous chunk; zeros (the sequence starts here) when ``None``.
      return_final_state: also return the state the next chunk needs: the last
        ``(W - 1) * d`` inputs (earlier ones from ``initial_state`` when the chunk is short).
      segment_ids: optional ``(B, L)`` integers for packed sequences. A segment is a run of
        equal ids; no output sees a token of another segment (the state resets at every
        change of id), and ``initial_state`` belongs to the segment at position 0, so it
        continues the sequence the previous chunk ended with (for a row whose chunk starts a
        new sequence, pass zeros). The final state holds zeros for positions outside the
        last segment. With segments the convolution is a tap sum with a
        per-position mask (:attr:`jdw.backends.Backend.segment_conv`): ``"taps"``'s, with its own
        derivatives, unless ``implementation`` names a backend that has its own (``"xla"``: the
        masked sum differentiated by JAX, the reference).
      dilation: spacing of the taps.
      data_format: ``"channels_last"`` or ``"channels_first"``.
      precision: see :func:`jdw.depthwise_conv`.
      preferred_element_type: dtype of the result; float32 accumulation for 16-bit inputs.
      implementation: backend (see :func:`jdw.depthwise_conv`).

    Returns:
      ``y`` like ``x`` with ``D * M`` channels, or ``(y, final_state)`` with ``return_final_state``.

    Raises:
      ValueError: for shapes that do not fit together (named in the message), or a state with a
        kernel of width 1 (which keeps none).

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> x = jnp.arange(1.0, 7.0).reshape(1, 6, 1)       # one sequence, one channel
      >>> kernel = jnp.ones((3, 1, 1))                      # sum of the last 3 tokens
      >>> jdw.causal_conv1d(x, kernel)[0, :, 0]
      Array([ 1.,  3.,  6.,  9., 12., 15.], dtype=float32)
      >>> y, state = jdw.causal_conv1d(x[:, :4], kernel, return_final_state=True)  # a first chunk
      >>> jdw.causal_conv1d(x[:, 4:], kernel, initial_state=state)[0, :, 0]        # the next one
      Array([12., 15.], dtype=float32)
      >>> jdw.causal_conv1d(x, kernel, segment_ids=jnp.array([[0, 0, 0, 1, 1, 1]]))[0, :, 0]
      Array([ 1.,  3.,  6.,  4.,  9., 15.], dtype=float32)
    """
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    op = "causal_conv1d"
    x, multiplier, dilation, pad = _check(x, kernel, data_format, dilation, op)
    if implementation is not None:
        registry.get(implementation)  # a bad name is an error with segment ids too, which do not use it
    args_lib.check_preferred_element_type(preferred_element_type, x, kernel, op)
    if bias is not None:
        bias = jnp.asarray(bias)
    args_lib.check_bias(bias, kernel.shape[-1])
    state = None if initial_state is None else _check_state(initial_state, x, pad, data_format, "initial_state", op)
    if return_final_state and pad == 0:
        raise ValueError(f"{op}: a kernel of width 1 keeps no state; return_final_state must be False")
    batch, length, channels = x.shape
    out_dtype = preferred_element_type or jnp.result_type(x, kernel)
    if state is not None:
        state = state.astype(x.dtype)
    reach = None
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
        if segment_ids.shape != (batch, length) or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(
                f"{op}: segment_ids must be integers of shape (B, L) = {(batch, length)}, "
                f"got {segment_ids.dtype} {segment_ids.shape}"
            )
        reach = _segment_reach(segment_ids, pad)

    def in_front(state, x):
        past = jnp.zeros((batch, pad, channels), x.dtype) if state is None else state
        return jnp.concatenate([past, x], axis=1)

    def composed(x, kernel, bias, state, reach):
        if reach is None:
            source, padding = (x, ((pad, 0),)) if state is None else (in_front(state, x), ((0, 0),))
            return depthwise_conv(
                source,
                kernel,
                bias,
                activation=activation,
                padding=padding,
                dilation=dilation,
                precision=precision,
                preferred_element_type=preferred_element_type,
                implementation=implementation,
            )
        # "taps" is the fastest on every platform measured (see the sequences guide); an empty
        # batch has nothing to compute and goes to the reference, like jdw.depthwise_conv's.
        name = "xla" if x.size == 0 else registry.forced() or implementation or "taps"
        segment_conv = registry.get(name).segment_conv or registry.get("taps").segment_conv
        accumulate = jnp.float64 if jnp.dtype(out_dtype) == jnp.float64 else jnp.float32  # then bias and activation
        total = segment_conv(in_front(state, x), kernel, reach, dilation=dilation, preferred_element_type=accumulate)
        if bias is not None:
            total = total + bias.astype(total.dtype)[None, None]
        return get_activation(activation)(total).astype(out_dtype)

    backend = registry.get(registry.forced() or implementation) if (registry.forced() or implementation) else None
    if backend is not None and backend.causal_conv is not None and (activation is None or isinstance(activation, str)):
        y = backend.causal_conv(
            x,
            kernel,
            bias,
            state,
            reach,
            dilation=dilation,
            activation=activation,
            out_dtype=out_dtype,
            fallback=composed,
        )
    else:
        y = composed(x, kernel, bias, state, reach)
    y = _channels_last(y, data_format)
    if not return_final_state:
        return y
    # The final state: the last pad inputs, zero before the last run's start (unless that run is the
    # first, which continues the state).
    tail = lax.slice_in_dim(in_front(state, x), length, length + pad, axis=1)
    if reach is None:
        return y, _channels_last(tail.astype(x.dtype), data_format)
    last_readable = jnp.where(reach[:, -1:] < pad, length - 1 - reach[:, -1:] + pad, 0)
    keep = (jnp.arange(length, length + pad, dtype=jnp.int32)[None] >= last_readable)[..., None]
    final_state = jnp.where(keep, tail, 0).astype(x.dtype)
    return y, _channels_last(final_state, data_format)


def _ring_order(state: jax.Array, position: jax.Array) -> jax.Array:
    """A ring buffer ``(B, S, D)`` whose oldest token is at slot ``position`` (``(B,)``), in order."""
    slots = (position[:, None] + jnp.arange(state.shape[1], dtype=jnp.int32)[None]) % state.shape[1]
    return jnp.take_along_axis(state, slots[:, :, None], axis=1)


def _update_reference(x, state, kernel, bias, position, *, multiplier, dilation, activation, out_dtype):
    """:func:`causal_conv1d_update` in jnp, channels last (``position``: ``(B,)`` int32 or ``None``)."""
    steps, pad = x.shape[1], state.shape[1]
    ordered = state if position is None else _ring_order(state, position)
    xp = jnp.concatenate([ordered.astype(x.dtype), x], axis=1)
    total = _tap_sum(xp, kernel, multiplier, dilation, steps, x.dtype)
    if bias is not None:
        total = total + bias.astype(total.dtype)[None, None]
    y = get_activation(activation)(total).astype(out_dtype)
    if position is None:
        return y, lax.slice_in_dim(xp, steps, steps + pad, axis=1).astype(state.dtype)
    if steps == 1:  # the new token into the oldest slot: in place where the state is donated
        rows = jnp.arange(state.shape[0])
        return y, state.at[rows, position].set(x[:, 0].astype(state.dtype), unique_indices=True)
    # The last pad tokens, slot (position + steps + i) % pad holding the i-th oldest.
    slots = (jnp.arange(pad, dtype=jnp.int32)[None] - position[:, None] - steps) % pad
    return y, jnp.take_along_axis(xp[:, steps:], slots[:, :, None], axis=1).astype(state.dtype)


def _check_position(position, batch, pad, op):
    position = jnp.asarray(position)
    if not jnp.issubdtype(position.dtype, jnp.integer) or position.shape not in ((), (batch,)):
        raise ValueError(
            f"{op}: position must be an integer scalar or of shape (B,) = ({batch},), "
            f"got {position.dtype} {position.shape}"
        )
    return jnp.broadcast_to(position.astype(jnp.int32) % pad, (batch,))


def causal_conv1d_update(
    x: ArrayLike,
    state: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    activation: ActivationLike = None,
    dilation: int = 1,
    position: ArrayLike | None = None,
    data_format: DataFormat = "channels_last",
    implementation: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One decoding step (or a few tokens) of :func:`causal_conv1d` against a fixed-size state.

    Like causal-conv1d's ``causal_conv1d_update``: the new tokens are appended to the state,
    the kernel is applied at each of them, and the state keeps the last ``(W - 1) * d``
    inputs. It works under ``jit``, ``vmap`` and ``lax.scan``, and the state never changes shape.

    The state is kept in one of two ways:

    - **in order** (``position=None``, the default): oldest token first, as
      :func:`causal_conv1d`'s ``final_state`` and ``initial_state`` have it. Each step shifts
      it by the new tokens.
    - **as a ring buffer** (``position`` given, like causal-conv1d's ``cache_seqlens``): the
      oldest token is at slot ``position % S`` (``S = (W - 1) * d``), and each new token
      overwrites the oldest one, so a step of one token writes one token per row instead of
      the whole state. The caller advances ``position`` by the tokens it passed. A state in
      order is a ring buffer at position 0, so decoding can start from a prefill's
      ``final_state`` with ``position=0``; :func:`ordered_state` turns a ring buffer back into
      order (to continue with :func:`causal_conv1d`).

    A step reads the state once. Where the state is donated (``jax.jit(...,
    donate_argnums=...)``) or carried by a loop (``lax.scan``, ``fori_loop``), the new state is
    written in place. On CPU (the ``"cpu"`` backend's C++ loop) a step of one token costs about
    one elementwise pass over the state or less (see the sequences guide).

    Args:
      x: ``(B, D)`` for one token, or ``(B, T, D)`` for ``T`` tokens (``(B, D, T)`` channels first).
      state: ``(B, (W - 1) * d, D)`` (``(B, D, (W - 1) * d)`` channels first), from
        ``causal_conv1d(..., return_final_state=True)``, a previous update, or zeros.
      kernel: ``(W, 1, D * M)``, as for :func:`causal_conv1d`.
      bias: optional ``(D * M,)``.
      activation: name or callable, after the bias.
      dilation: spacing of the taps.
      position: ``None`` (the state in order), or an integer scalar or ``(B,)`` array: the
        ring buffer's slot of the oldest token per row (taken modulo ``S``).
      data_format: ``"channels_last"`` or ``"channels_first"``.
      implementation: backend, see :func:`jdw.depthwise_conv`. ``"cpu"`` runs one token of
        float32 or bfloat16 with channel multiplier 1 in its C++ loop (the automatic choice on
        CPU); everything else, and every other backend, runs the same few slices and
        multiply-adds in jnp, which XLA fuses.

    Returns:
      ``(y, new_state)``: ``y`` of shape ``(B, D * M)`` (or ``(B, T, D * M)``), and the state
      after these tokens (a ring buffer whose oldest token is now at ``position + T``, when
      ``position`` is given).

    Raises:
      ValueError: for shapes that do not fit together, or a ``position`` that is not an integer
        scalar or ``(B,)`` array.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> kernel = jnp.ones((3, 1, 1))
      >>> state = jnp.zeros((1, 2, 1))
      >>> for token in (1.0, 2.0, 3.0, 4.0):
      ...     y, state = jdw.causal_conv1d_update(jnp.full((1, 1), token), state, kernel)
      ...     print(float(y[0, 0]))
      1.0
      3.0
      6.0
      9.0

      The same as a ring buffer: one write per token, the position advancing.

      >>> state = jnp.zeros((1, 2, 1))
      >>> for t, token in enumerate((1.0, 2.0, 3.0, 4.0)):
      ...     y, state = jdw.causal_conv1d_update(jnp.full((1, 1), token), state, kernel, position=t)
      ...     print(float(y[0, 0]), state[0, :, 0].tolist())
      1.0 [1.0, 0.0]
      3.0 [1.0, 2.0]
      6.0 [3.0, 2.0]
      9.0 [3.0, 4.0]
      >>> jdw.ordered_state(state, position=4)[0, :, 0]
      Array([3., 4.], dtype=float32)
    """
    x, state, kernel = jnp.asarray(x), jnp.asarray(state), jnp.asarray(kernel)
    op = "causal_conv1d_update"
    one_token = x.ndim == 2
    if one_token:
        x = x[:, None, :] if data_format == "channels_last" else x[:, :, None]
    x, multiplier, dilation, pad = _check(x, kernel, data_format, dilation, op)
    state = _check_state(state, x, pad, data_format, "state", op)
    if bias is not None:
        bias = jnp.asarray(bias)
    args_lib.check_bias(bias, kernel.shape[-1])
    if position is not None:
        position = _check_position(position, x.shape[0], pad, op)
    name = registry.forced() or implementation
    if name is not None:
        registry.get(name)  # a bad name is an error
    run = dict(dilation=dilation, activation=activation, out_dtype=jnp.result_type(x, kernel))
    reference = functools.partial(_update_reference, multiplier=multiplier, **run)
    usable = {
        platform: backend
        for platform, backend in (
            [(None, registry.get(name))]
            if name is not None
            else [(p, registry.get(registry.automatic_choice(p))) for p in ("cpu", "cuda", "rocm", "tpu")]
        )
        if backend.causal_update is not None and (activation is None or isinstance(activation, str)) and x.size
    }
    args = (x, state, kernel, bias, position)
    if not usable:
        y, new_state = reference(*args)
    elif None in usable:
        y, new_state = usable[None].causal_update(*args, fallback=reference, **run)
    else:
        branches = {p: functools.partial(b.causal_update, fallback=reference, **run) for p, b in usable.items()}
        y, new_state = lax.platform_dependent(*args, default=reference, **branches)
    y, new_state = _channels_last(y, data_format), _channels_last(new_state, data_format)
    return (y[:, 0] if data_format == "channels_last" else y[:, :, 0]) if one_token else y, new_state


def ordered_state(state: ArrayLike, position: ArrayLike, *, data_format: DataFormat = "channels_last") -> jax.Array:
    """A ring-buffer state of :func:`causal_conv1d_update` (``position``: its oldest slot) in order, oldest first.

    The in-order state is what :func:`causal_conv1d` takes as ``initial_state``.

    Args:
      state: ``(B, S, D)`` (``(B, D, S)`` channels first).
      position: integer scalar or ``(B,)``, as passed to the next :func:`causal_conv1d_update`.
      data_format: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      The state of the same shape, oldest token first.

    Raises:
      ValueError: for a state that is not 3-D with at least one token, or a ``position`` that is
        not an integer scalar or ``(B,)`` array.

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> ring = jnp.array([[[3.0], [1.0], [2.0]]])   # oldest token (1.0) at slot 1
      >>> jdw.ordered_state(ring, 1)[0, :, 0]
      Array([1., 2., 3.], dtype=float32)
    """
    args_lib.check_choice(data_format, args_lib.DATA_FORMATS, "data_format")
    state = jnp.asarray(state)
    if state.ndim != 3 or state.shape[1 if data_format == "channels_last" else 2] == 0:
        raise ValueError(f"ordered_state: state must be (B, S, D) with S > 0 ({data_format}), got shape {state.shape}")
    state = _channels_last(state, data_format)
    position = _check_position(position, state.shape[0], state.shape[1], "ordered_state")
    return _channels_last(_ring_order(state, position), data_format)


__all__ = ["causal_conv1d", "causal_conv1d_update", "ordered_state", "state_size"]
