"""Causal depthwise conv1d: whole sequences, chunks with carried state, decoding steps, packed sequences.

Everything is checked against an independent NumPy loop over positions (``_numpy_causal``)
on every backend, forward and gradients (the initial state's too).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CPU, IMPLEMENTATIONS, assert_close

import jdw


def _numpy_causal(x, kernel, bias=None, *, state=None, segment_ids=None, dilation=1):
    """y[b, t, c*M+m] = Σ_i k[i, 0, c*M+m] · x[b, t - (W-1-i)·d, c], reading only the token's own run of ids;
    the state (the tokens before position 0) belongs to the run at position 0."""
    x = np.asarray(x, np.float64)
    b_, length, channels = x.shape
    width, _, out_channels = kernel.shape
    multiplier = out_channels // channels
    pad = (width - 1) * dilation
    past = np.zeros((b_, pad, channels)) if state is None else np.asarray(state, np.float64)
    full = np.concatenate([past, x], axis=1)
    ids = np.zeros((b_, length), int) if segment_ids is None else np.asarray(segment_ids)
    y = np.zeros((b_, length, out_channels))
    for b in range(b_):
        start = 0
        for t in range(length):
            if t > 0 and ids[b, t] != ids[b, t - 1]:
                start = t
            for i in range(width):
                source = t - (width - 1 - i) * dilation
                if source < start and not (start == 0 and source >= -pad):
                    continue
                for c in range(out_channels):
                    y[b, t, c] += kernel[i, 0, c] * full[b, source + pad, c // multiplier]
    if bias is not None:
        y = y + bias
    return y


def _case(rng, batch=2, length=13, channels=3, width=4, multiplier=1, dilation=1, state=False, segments=False):
    x = rng.standard_normal((batch, length, channels)).astype(np.float32)
    kernel = rng.standard_normal((width, 1, channels * multiplier)).astype(np.float32)
    bias = rng.standard_normal((channels * multiplier,)).astype(np.float32)
    pad = (width - 1) * dilation
    initial = rng.standard_normal((batch, pad, channels)).astype(np.float32) if state else None
    ids = None
    if segments:  # runs of random lengths, ids that need not increase (a change of id is a new run)
        ids = np.cumsum(rng.random((batch, length)) < 0.3, axis=1) % 3
    return x, kernel, bias, initial, ids


CASES = [
    dict(width=4),
    dict(width=4, state=True),
    dict(width=4, segments=True),
    dict(width=4, state=True, segments=True, multiplier=2),
    dict(width=3, dilation=2, state=True, segments=True),
    dict(width=5, length=3, state=True),  # a chunk shorter than the state
    dict(width=1),
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_matches_numpy_with_state_and_segments(case, implementation, rng):
    dilation = case.get("dilation", 1)
    x, kernel, bias, initial, ids = _case(rng, **case)
    want = _numpy_causal(x, kernel, bias, state=initial, segment_ids=ids, dilation=dilation)
    keep_state = case["width"] > 1
    out = jdw.causal_conv1d(
        x,
        kernel,
        bias,
        initial_state=initial,
        segment_ids=ids,
        dilation=dilation,
        return_final_state=keep_state,
        implementation=implementation,
    )
    y, final = out if keep_state else (out, None)
    assert_close(y, want)
    if keep_state:  # the last (W-1)*d inputs, zero outside the last run
        pad = (case["width"] - 1) * dilation
        past = np.zeros((x.shape[0], pad, x.shape[2])) if initial is None else initial
        tail = np.concatenate([past, x], axis=1)[:, -pad:]
        if ids is not None:
            runs = np.concatenate([np.full((x.shape[0], pad), -1), np.arange(x.shape[1])[None].repeat(2, 0)], 1)
            changes = [[t for t in range(1, ids.shape[1]) if row[t] != row[t - 1]] for row in ids]
            starts = np.array([[c[-1] if c else 0] for c in changes])  # where each row's last run starts
            first = np.where(starts > 0, starts, -pad)
            tail = np.where((runs[:, -pad:] >= first)[..., None], tail, 0)
        assert_close(final, tail)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_silu_is_applied_after_the_bias(implementation, rng):
    x, kernel, bias, initial, _ = _case(rng, state=True)
    y = jdw.causal_conv1d(x, kernel, bias, activation="silu", initial_state=initial, implementation=implementation)
    z = _numpy_causal(x, kernel, bias, state=initial)
    assert_close(y, z / (1 + np.exp(-z)))


@pytest.mark.parametrize("segments", [False, True])
def test_bfloat16_accumulates_in_float32(segments, rng):
    x, kernel, bias, initial, ids = _case(rng, state=True, segments=segments)
    as_bf16 = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731
    y, final = jdw.causal_conv1d(
        as_bf16(x),
        as_bf16(kernel),
        as_bf16(bias),
        initial_state=as_bf16(initial),
        segment_ids=ids,
        return_final_state=True,
    )
    assert y.dtype == final.dtype == jnp.bfloat16
    rounded = [np.asarray(as_bf16(a), np.float32) for a in (x, kernel, bias, initial)]
    want = _numpy_causal(*rounded[:3], state=rounded[3], segment_ids=ids)
    assert_close(y, want, dtype="bfloat16")
    step, _ = jdw.causal_conv1d_update(as_bf16(x[:, 0]), as_bf16(initial), as_bf16(kernel), as_bf16(bias))
    assert step.dtype == jnp.bfloat16
    assert_close(step, _numpy_causal(*rounded[:3], state=rounded[3])[:, 0], dtype="bfloat16")


@pytest.mark.parametrize("segments", [False, True])
def test_any_split_into_chunks_gives_the_one_call_output(segments, rng):
    x, kernel, bias, _, ids = _case(rng, length=29, segments=segments)
    whole = jdw.causal_conv1d(x, kernel, bias, segment_ids=ids)
    for cuts in ([5, 6, 20], [1, 2, 3, 4], [28]):
        state, parts = None, []
        for lo, hi in itertools.pairwise([0, *cuts, 29]):
            if ids is not None and state is not None:  # a row whose chunk starts a new sequence starts from zeros
                state = jnp.where((ids[:, lo] == ids[:, lo - 1])[:, None, None], state, 0)
            y, state = jdw.causal_conv1d(
                x[:, lo:hi],
                kernel,
                bias,
                initial_state=state,
                return_final_state=True,
                segment_ids=None if ids is None else ids[:, lo:hi],
            )
            parts.append(y)
        assert_close(jnp.concatenate(parts, axis=1), whole)


def test_decoding_token_by_token_under_scan_gives_the_full_forward(rng):
    x, kernel, bias, initial, _ = _case(rng, length=11, width=4, multiplier=2, state=True)
    whole = jdw.causal_conv1d(x, kernel, bias, activation="silu", initial_state=initial)

    def step(state, token):
        y, state = jdw.causal_conv1d_update(token, state, kernel, bias, activation="silu")
        return state, y

    final, ys = jax.jit(lambda s, xs: jax.lax.scan(step, s, xs))(initial, jnp.swapaxes(x, 0, 1))
    assert_close(jnp.swapaxes(ys, 0, 1), whole)
    _, expected_final = jdw.causal_conv1d(x, kernel, bias, initial_state=initial, return_final_state=True)
    assert_close(final, expected_final)
    # a prefill, then a few tokens at once
    y0, state = jdw.causal_conv1d(x[:, :6], kernel, bias, initial_state=initial, return_final_state=True)
    y1, _ = jdw.causal_conv1d_update(x[:, 6:], state, kernel, bias)
    assert_close(jnp.concatenate([y0, y1], axis=1), jdw.causal_conv1d(x, kernel, bias, initial_state=initial))


def test_update_vmaps_over_independent_streams(rng):
    x, kernel, _, initial, _ = _case(rng, batch=1, length=1, width=4, state=True)
    streams = jnp.stack([initial, 2 * initial, -initial])
    tokens = jnp.stack([x[:, 0], x[:, 0] + 1, x[:, 0] - 1])
    ys, states = jax.vmap(lambda t, s: jdw.causal_conv1d_update(t, s, kernel))(tokens, streams)
    for i in range(3):
        y, state = jdw.causal_conv1d_update(tokens[i], streams[i], kernel)
        assert_close(ys[i], y)
        assert_close(states[i], state)


def _roll_rows(state, shifts):
    """Each row's state (B, S, D) as a ring buffer whose oldest token is at slot shifts[b]."""
    shifts = np.broadcast_to(shifts, len(state))
    return np.stack([np.roll(s, int(p), axis=0) for s, p in zip(np.asarray(state), shifts)])


RING_CASES = [
    dict(width=4, tokens=1, position=[0, 2]),
    dict(width=4, tokens=1, position=5),  # a scalar, past the buffer's length (taken modulo S)
    dict(width=4, tokens=2, position=[1, -1]),
    dict(width=3, dilation=2, tokens=1, position=[3, 1]),
    dict(width=4, tokens=4, position=[2, 0]),  # more tokens than the state holds
    dict(width=2, tokens=1, position=[0, 7]),
    dict(width=3, multiplier=2, tokens=2, position=[1, 0]),
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", RING_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_ring_buffer_update_matches_numpy(case, implementation, rng):
    """A ring buffer at any position gives the in-order step's output, and its state in order is the in-order state."""
    case = dict(case)
    tokens, position = case.pop("tokens"), case.pop("position")
    x, kernel, bias, initial, _ = _case(rng, length=tokens, state=True, **case)
    pad = initial.shape[1]
    ring = _roll_rows(initial, np.mod(position, pad))
    y, new = jdw.causal_conv1d_update(
        x if tokens > 1 else x[:, 0], ring, kernel, bias, activation="silu", position=position,
        dilation=case.get("dilation", 1), implementation=implementation,
    )  # fmt: skip
    want = _numpy_causal(x, kernel, bias, state=initial, dilation=case.get("dilation", 1))
    assert_close(y if tokens > 1 else y[:, None], _silu(want))
    expected_state = np.concatenate([initial, x], axis=1)[:, tokens:]
    assert_close(jdw.ordered_state(new, np.asarray(position) + tokens), expected_state)


def _silu(v):
    return v / (1 + np.exp(-v))


@pytest.mark.parametrize("implementation", [None, *IMPLEMENTATIONS])
def test_ring_buffer_decoding_under_scan_gives_the_full_forward(implementation, rng):
    """Prefill, then decode token by token on a ring buffer carried by lax.scan (position from 0 after the prefill)."""
    x, kernel, bias, initial, _ = _case(rng, length=11, width=4, state=True)
    whole = jdw.causal_conv1d(x, kernel, bias, activation="silu", initial_state=initial)
    y0, state = jdw.causal_conv1d(
        x[:, :4], kernel, bias, activation="silu", initial_state=initial, return_final_state=True
    )

    def step(carry, token):
        state, position = carry
        y, state = jdw.causal_conv1d_update(
            token, state, kernel, bias, activation="silu", position=position, implementation=implementation
        )
        return (state, position + 1), y

    (final, position), ys = jax.jit(lambda c, xs: jax.lax.scan(step, c, xs))((state, 0), jnp.swapaxes(x[:, 4:], 0, 1))
    assert_close(jnp.concatenate([y0, jnp.swapaxes(ys, 0, 1)], axis=1), whole)
    _, expected_final = jdw.causal_conv1d(x, kernel, bias, initial_state=initial, return_final_state=True)
    assert_close(jdw.ordered_state(final, position), expected_final)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("ring", [False, True])
def test_update_gradients_match_numpy_derivatives(implementation, ring, rng):
    """Reverse and forward mode of one step (x, state, kernel, bias) against the xla path's, which JAX derives."""
    x, kernel, bias, initial, _ = _case(rng, length=1, width=4, state=True)
    position = np.array([2, 0]) if ring else None
    state = _roll_rows(initial, position) if ring else initial

    def loss(name):
        def f(x, state, kernel, bias):
            y, new = jdw.causal_conv1d_update(
                x, state, kernel, bias, activation="silu", position=position, implementation=name
            )
            return jnp.sum(y * jnp.arange(1.0, 4.0)[None]) + jnp.sum(new**2)

        return f

    args = (x[:, 0], state, kernel, bias)
    grads = jax.grad(loss(implementation), argnums=(0, 1, 2, 3))(*args)
    expected = jax.grad(loss("xla"), argnums=(0, 1, 2, 3))(*args)
    for got, want in zip(grads, expected):
        assert_close(got, want)
    tangents = tuple(np.ones_like(a) for a in args)
    assert_close(jax.jvp(loss(implementation), args, tangents)[1], jax.jvp(loss("xla"), args, tangents)[1])

    # The y of one step, differentiated by NumPy: the kernel's gradient is the taps' inputs.
    def output(k):
        return jnp.sum(jdw.causal_conv1d_update(x[:, 0], state, k, position=position, implementation=implementation)[0])

    dk = jax.grad(output)(kernel)
    window = np.concatenate([initial, x], axis=1)  # in order
    assert_close(dk[:, 0], window.sum(0))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_update_vmaps_over_a_stack_of_layers(implementation, rng):
    """vmap over layers (kernels, states and tokens stacked; one position for all) equals a loop over them."""
    layers = 3
    x, kernel, bias, initial, _ = _case(rng, length=1, width=4, state=True)
    kernels = np.stack([kernel * (i + 1) for i in range(layers)])
    states = np.stack([initial - i for i in range(layers)])
    tokens = np.stack([x[:, 0] + i for i in range(layers)])
    for position in (None, 2):
        run = dict(position=position, implementation=implementation)
        step = jax.vmap(lambda t, s, k, run=run: jdw.causal_conv1d_update(t, s, k, bias, **run))
        ys, news = jax.jit(step)(tokens, states, kernels)
        # and a kernel shared by every stream (not batched)
        shared = jax.vmap(lambda t, s, run=run: jdw.causal_conv1d_update(t, s, kernel, **run))
        ys_shared, _ = shared(tokens, states)
        for i in range(layers):
            y, new = jdw.causal_conv1d_update(tokens[i], states[i], kernels[i], bias, position=position)
            assert_close(ys[i], y)
            assert_close(news[i], new)
            assert_close(ys_shared[i], jdw.causal_conv1d_update(tokens[i], states[i], kernel, position=position)[0])


@pytest.mark.skipif(not CPU, reason="the cpu backend is not built here")
@pytest.mark.parametrize("position", [None, 1])
def test_cpu_decoding_step_updates_the_state_in_place(position, rng):
    """Donated (or carried by a loop), the state is the custom call's aliased operand: no copy of it is made."""
    x, kernel, bias, initial, _ = _case(rng, batch=4, length=1, channels=40, width=4, state=True)

    def step(state, token):
        return jdw.causal_conv1d_update(token, state, kernel, bias, activation="silu", position=position)[::-1]

    donated = jax.jit(step, donate_argnums=0).lower(initial, x[:, 0]).compile().as_text()
    assert "jdw_depthwise_causal_update" in donated and "input_output_alias={ {0}: (0, {}, may-alias) }" in donated
    assert " copy(" not in donated, donated
    loop = jax.jit(lambda s, xs: jax.lax.scan(step, s, xs)).lower(initial, np.stack([x[:, 0]] * 3)).compile().as_text()
    assert loop.count("jdw_depthwise_causal_update") >= 1
    state_shape = "f32[4,3,40]"
    copies = [line for line in loop.splitlines() if " copy(" in line and state_shape in line.split("=")[1][:30]]
    assert len(copies) <= 1, copies  # at most the copy of the caller's (not donated) initial state, outside the loop


@pytest.mark.skipif(not CPU, reason="the cpu backend is not built here")
def test_cpu_decoding_step_in_bfloat16_and_its_fallbacks(rng):
    """bfloat16 runs in the C++ loop; a channel multiplier, float16 and a callable activation run the jnp step."""
    x, kernel, bias, initial, _ = _case(rng, length=1, width=4, state=True)
    as_bf16 = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731
    kernel16, bias16 = as_bf16(kernel), as_bf16(bias)
    y, new = jdw.causal_conv1d_update(
        as_bf16(x[:, 0]), as_bf16(initial), kernel16, bias16, position=1, implementation="cpu"
    )
    want, want_state = jdw.causal_conv1d_update(
        as_bf16(x[:, 0]), as_bf16(initial), kernel16, bias16, position=1, implementation="xla"
    )
    assert y.dtype == want.dtype and new.dtype == jnp.bfloat16
    assert_close(y, want, np.float32)
    np.testing.assert_array_equal(np.asarray(new, np.float32), np.asarray(want_state, np.float32))
    program = (
        jax.jit(lambda t, s: jdw.causal_conv1d_update(t, s, kernel16, bias16, implementation="cpu"))
        .lower(as_bf16(x[:, 0]), as_bf16(initial))
        .as_text()
    )
    assert "jdw_depthwise_causal_update" in program
    wide = np.concatenate([kernel, kernel], axis=-1)
    half = lambda a: jnp.asarray(a, jnp.float16)  # noqa: E731
    for t, s, k, act in [
        (x[:, 0], initial, wide, None),
        (half(x[:, 0]), half(initial), half(kernel), None),
        (x[:, 0], initial, kernel, jnp.tanh),
    ]:
        program = jax.jit(
            lambda t, s, k=k, act=act: jdw.causal_conv1d_update(t, s, k, activation=act, implementation="cpu")
        )
        assert "jdw_depthwise_causal_update" not in program.lower(t, s).as_text()
        want = jdw.causal_conv1d_update(t, s, k, activation=act, implementation="xla")[0]
        assert_close(program(t, s)[0], want, t.dtype)


def test_ordered_state_channels_first_and_rows(rng):
    _, _, _, initial, _ = _case(rng, batch=3, width=5, state=True)
    ring = _roll_rows(initial, [0, 1, 3])
    assert_close(jdw.ordered_state(ring, jnp.array([0, 1, 3])), initial)
    assert_close(
        jdw.ordered_state(np.swapaxes(ring, 1, 2), jnp.array([4, 5, 7]), data_format="channels_first"),
        np.swapaxes(initial, 1, 2),
    )


def test_channels_first(rng):
    x, kernel, bias, initial, ids = _case(rng, state=True, segments=True)
    y, final = jdw.causal_conv1d(x, kernel, bias, initial_state=initial, segment_ids=ids, return_final_state=True)
    yf, finalf = jdw.causal_conv1d(
        np.swapaxes(x, 1, 2),
        kernel,
        bias,
        initial_state=np.swapaxes(initial, 1, 2),
        segment_ids=ids,
        return_final_state=True,
        data_format="channels_first",
    )
    assert_close(np.swapaxes(yf, 1, 2), y)
    assert_close(np.swapaxes(finalf, 1, 2), final)
    step, state = jdw.causal_conv1d_update(
        x[:, 0, :], np.swapaxes(initial, 1, 2), kernel, bias, data_format="channels_first"
    )
    assert step.shape == (2, 3) and state.shape == (2, 3, 3)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("segments", [False, True])
def test_gradients_match_xla_including_the_initial_state(implementation, segments, rng):
    x, kernel, bias, initial, ids = _case(rng, state=True, segments=segments, multiplier=2)

    def loss(impl):
        def f(x, kernel, bias, initial):
            y, final = jdw.causal_conv1d(
                x,
                kernel,
                bias,
                activation="silu",
                initial_state=initial,
                segment_ids=ids,
                return_final_state=True,
                implementation=impl,
            )
            return jnp.sum(jnp.sin(y)) + jnp.sum(final**2)

        return jax.grad(f, argnums=(0, 1, 2, 3))

    got = loss(implementation)(x, kernel, bias, initial)
    want = loss("xla")(x, kernel, bias, initial)
    for a, b in zip(got, want):
        assert_close(a, b)
    # and the reference itself against finite differences along one direction
    f = lambda s: jnp.sum(jnp.sin(jdw.causal_conv1d(x, kernel, initial_state=s, segment_ids=ids, implementation="xla")))  # noqa: E731
    direction = jnp.asarray(rng.standard_normal(initial.shape), jnp.float32)
    fd = (f(initial + 1e-2 * direction) - f(initial - 1e-2 * direction)) / 2e-2
    assert abs(float(jnp.vdot(jax.grad(f)(initial), direction)) - float(fd)) < 1e-2 * max(1.0, abs(float(fd)))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_vmap_over_segment_ids_and_kernels(implementation, rng):
    """Stacks of packed batches fold into the batch; a stack of kernels and ids together (and the kernel
    gradient of a stack of ids) maps one element at a time: each equals the loop over the stack."""
    x, kernel, bias, initial, _ = _case(rng, state=True)
    xs = np.stack([x, x[::-1] * 0.5])
    ids = np.stack([np.cumsum(rng.random((2, 13)) < p, axis=1) for p in (0.2, 0.5)])
    kernels = np.stack([kernel, kernel * -0.5])

    def f(x, kernel, ids, impl=implementation):
        return jdw.causal_conv1d(x, kernel, bias, initial_state=initial, segment_ids=ids, implementation=impl)

    def dk(x, kernel, ids, impl=implementation):
        return jax.grad(lambda k: jnp.sum(jnp.sin(f(x, k, ids, impl))))(kernel)

    for fn, axes, args in [
        (f, (0, None, 0), (xs, kernel, ids)),
        (f, (None, 0, 0), (x, kernels, ids)),
        (f, (0, 0, None), (xs, kernels, ids[0])),
        (dk, (0, None, 0), (xs, kernel, ids)),
    ]:
        got = jax.vmap(fn, axes)(*args)
        for n in range(2):
            one = [a if ax is None else a[n] for a, ax in zip(args, axes)]
            assert_close(got[n], fn(*one, impl="xla"))


KERNEL_CASES = [
    dict(width=4, state=True),
    dict(width=3, dilation=2, state=True, length=1100),  # two TPU blocks: the window carries over
    dict(width=4, state=True, segments=True),
    dict(width=3, dilation=2, state=True, segments=True),
    dict(width=4, state=True, segments=True, multiplier=2),  # the composed path
    dict(width=4, segments=True),  # no state: the composed path
]


@pytest.mark.parametrize("target", ["triton", "tpu"])
@pytest.mark.parametrize("activation", ["silu", "relu", None])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_causal_kernels_in_the_interpreter(case, activation, target, rng):
    """The GPU and TPU kernels for a chunk with a state (the state, and on GPU the segment positions, read in
    place), run by Pallas's interpreter: forward, gradients with respect to everything, and forward mode,
    against the xla reference. On TPU packed rows take the composed path."""
    from jdw.backends import pallas

    dilation = case.get("dilation", 1)
    x, kernel, bias, initial, ids = _case(rng, **case)

    def f(impl):
        def conv(x, kernel, bias, initial):
            return jdw.causal_conv1d(
                x,
                kernel,
                bias,
                activation=activation,
                initial_state=initial,
                segment_ids=ids,
                dilation=dilation,
                implementation=impl,
            )

        return conv

    args = (x, kernel, bias, initial if initial is not None else None)
    argnums = (0, 1, 2, 3) if initial is not None else (0, 1, 2)
    loss = lambda conv: lambda *a: jnp.sum(jnp.sin(conv(*a)))  # noqa: E731
    with pallas.interpret_mode(True, target):
        jaxpr = str(jax.make_jaxpr(f("pallas"))(*args))
        got = f("pallas")(*args), jax.grad(loss(f("pallas")), argnums)(*args)
        tangent = jax.jvp(lambda k: f("pallas")(x, k, bias, args[3]), (kernel,), (kernel * 0.5,))[1]
    want = f("xla")(*args), jax.grad(loss(f("xla")), argnums)(*args)
    want_tangent = jax.jvp(lambda k: f("xla")(x, k, bias, args[3]), (kernel,), (kernel * 0.5,))[1]
    served = case.get("multiplier", 1) == 1 and initial is not None and (target == "triton" or ids is None)
    name = {"triton": "jdw_causal_conv1d_forward", "tpu": "jdw_causal_conv1d_tpu_forward"}[target]
    assert (name in jaxpr) == served
    for a, b in zip(jax.tree.leaves((got, tangent)), jax.tree.leaves((want, want_tangent))):
        assert_close(a, b)


@pytest.mark.parametrize("target", ["triton", "tpu"])
def test_causal_kernels_second_order_and_batched(target):
    """hessian, vmap of grad and jacfwd through the GPU and TPU kernels (interpreter; differentiated, the composed
    path's derivatives) equal xla's (packed rows on GPU, which reads them in place)."""
    from jdw.backends import pallas

    rng = np.random.default_rng(1)
    x, kernel, _, state, ids = _case(rng, length=7, channels=4, width=3, state=True, segments=target == "triton")

    def f(impl):
        def loss(x, params):
            kernel, state = params
            y = jdw.causal_conv1d(
                x, kernel, activation="silu", initial_state=state, segment_ids=ids, implementation=impl
            )
            return jnp.sum(jnp.sin(y))

        return loss

    def transforms(loss):
        return (
            jax.hessian(loss, 1)(x, (kernel, state)),
            jax.vmap(jax.grad(loss, 1), (0, None))(np.stack([x, 2 * x]), (kernel, state)),
            jax.jacfwd(loss, 1)(x, (kernel, state)),
        )

    with pallas.interpret_mode(True, target):
        got = transforms(f("pallas"))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(transforms(f("xla")))):
        assert_close(a, b)


def test_packed_sequences_stay_on_the_tap_sums():
    """Every derivative of the packed path is one of the three masked tap sums, never JAX's derivative of a
    masked slice sum (which costs a reduction per tap)."""
    x, kernel, ids = jnp.ones((2, 9, 4)), jnp.ones((4, 1, 4)), jnp.array([[0] * 4 + [1] * 5] * 2)
    f = lambda x, k: jnp.sum(jnp.sin(jdw.causal_conv1d(x, k, segment_ids=ids, implementation="taps")))  # noqa: E731
    hessian = str(jax.make_jaxpr(jax.hessian(f, (0, 1)))(x, kernel))
    jvp = str(jax.make_jaxpr(lambda x, k: jax.jvp(f, (x, k), (x, k)))(x, kernel))
    for kind in ("depthwise_conv[", "depthwise_conv_transpose[", "depthwise_kernel_grad["):
        assert kind in hessian
    assert jvp.count("depthwise_conv[") == 3


def test_forward_mode_through_segments_and_updates(rng):
    """The packed path's primitives and the update's plain jnp both have forward mode."""
    x, kernel, bias, initial, ids = _case(rng, state=True, segments=True)
    f = lambda k: jdw.causal_conv1d(x, k, bias, initial_state=initial, segment_ids=ids)  # noqa: E731
    _, tangent = jax.jvp(f, (kernel,), (jnp.ones_like(kernel),))
    assert_close(tangent, _numpy_causal(x, np.ones_like(kernel), None, state=initial, segment_ids=ids))
    g = lambda s: jdw.causal_conv1d_update(x[:, 0], s, kernel)[0]  # noqa: E731
    assert jax.jvp(g, (initial,), (initial,))[1].shape == (2, 3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, k: jdw.causal_conv1d(x[0], k), r"x must be \(B, L, D\) \(channels_last\), got shape \(13, 3\)"),
        (
            lambda x, k: jdw.causal_conv1d(x, k[:, :, :2]),
            r"kernel must be \(W, 1, D \* M\) for D=3 .* got shape \(4, 1, 2\)",
        ),
        (
            lambda x, k: jdw.causal_conv1d(x, k, initial_state=jnp.zeros((2, 4, 3))),
            r"initial_state must have shape \(2, 3, 3\) .* got \(2, 4, 3\)",
        ),
        (
            lambda x, k: jdw.causal_conv1d(x, k[:1], initial_state=jnp.zeros((2, 0, 3))),
            r"kernel of width 1 keeps no state, so initial_state must be None",
        ),
        (lambda x, k: jdw.causal_conv1d(x, k[:1], return_final_state=True), r"return_final_state must be False"),
        (
            lambda x, k: jdw.causal_conv1d(x, k, segment_ids=jnp.zeros((2, 12), jnp.int32)),
            r"segment_ids must be integers of shape \(B, L\) = \(2, 13\), got int32 \(2, 12\)",
        ),
        (
            lambda x, k: jdw.causal_conv1d(x, k, segment_ids=jnp.zeros((2, 13))),
            r"segment_ids must be integers .* got float32",
        ),
        (
            lambda x, k: jdw.causal_conv1d_update(x[:, 0], jnp.zeros((2, 3)), k),
            r"causal_conv1d_update: state must have shape \(2, 3, 3\) .* got \(2, 3\)",
        ),
        (
            lambda x, k: jdw.causal_conv1d_update(x[:, 0], jnp.zeros((2, 3, 3)), k, position=1.0),
            r"causal_conv1d_update: position must be an integer scalar or of shape \(B,\) = \(2,\), got float32 \(\)",
        ),
        (
            lambda x, k: jdw.causal_conv1d_update(x[:, 0], jnp.zeros((2, 3, 3)), k, position=jnp.zeros(3, int)),
            r"position must be an integer scalar or of shape \(B,\) = \(2,\), got int32 \(3,\)",
        ),
        (
            lambda x, k: jdw.ordered_state(jnp.zeros((2, 0, 3)), 0),
            r"ordered_state: state must be \(B, S, D\) with S > 0",
        ),
        (lambda x, k: jdw.causal_conv1d_update(x[:, 0], jnp.zeros((2, 3, 3)), k, implementation="tap"), r"tap"),
        (lambda x, k: jdw.causal_conv1d(x, k, bias=jnp.zeros(4)), r"bias"),
        (
            lambda x, k: jdw.causal_conv1d(x, k, segment_ids=jnp.zeros((2, 13), jnp.int32), implementation="tap"),
            r"tap",
        ),
    ],
)
def test_bad_input_is_named(call, message, rng):
    x, kernel, *_ = _case(rng)
    with pytest.raises(ValueError, match=message):
        call(jnp.asarray(x), jnp.asarray(kernel))


def test_kernel_from_causal_conv1d_and_pytorch_layouts(rng):
    """The one-liners the docstring gives turn a (D, W) and a (D, 1, W) weight into jdw's (W, 1, D)."""
    x, kernel, *_ = _case(rng)
    weight = np.asarray(kernel[:, 0, :]).T  # causal-conv1d's (D, W)
    torch_weight = weight[:, None, :]  # PyTorch Conv1d(groups=D): (D, 1, W)
    want = jdw.causal_conv1d(x, kernel)
    assert_close(jdw.causal_conv1d(x, weight.T[:, None, :]), want)
    assert_close(jdw.causal_conv1d(x, np.transpose(torch_weight, (2, 1, 0))), want)


# --- Flax layers ----------------------------------------------------------------------------------


def test_nnx_layer_is_a_drop_in_for_a_causal_grouped_conv():
    from flax import nnx

    ours = jdw.nnx.CausalConv1D(6, 4, depth_multiplier=2, rngs=nnx.Rngs(0))
    theirs = nnx.Conv(6, 12, (4,), feature_group_count=6, padding="CAUSAL", rngs=nnx.Rngs(1))
    assert ours.kernel.shape == theirs.kernel.shape and ours.bias.shape == theirs.bias.shape
    nnx.update(theirs, nnx.state(ours, nnx.Param))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 6)), jnp.float32)
    assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_nnx_prefill_then_decode_gives_the_full_forward(implementation):
    from flax import nnx

    conv = jdw.nnx.CausalConv1D(5, 4, activation="silu", implementation=implementation, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 12, 5)), jnp.float32)
    full = conv(x)
    conv.init_cache(3)

    @nnx.jit
    def step(conv, token):
        return conv(token, decode=True)

    outputs = [conv(x[:, :8], decode=True)] + [step(conv, x[:, t : t + 1]) for t in range(8, 12)]
    assert_close(jnp.concatenate(outputs, axis=1), full)
    # The cache is a ring buffer: 4 tokens after the prefill, its oldest is at slot 4 % 3.
    assert int(conv.position[...]) == 1
    assert_close(jdw.ordered_state(conv.state[...], conv.position[...]), x[:, 9:12])
    # Decoding steps, then a chunk longer than the kernel (run from the state in order), then steps again.
    longer = jnp.concatenate([x, x[:, ::-1]], axis=1)
    conv.init_cache(3)
    pieces = [(0, 3), (3, 4), (4, 6), (6, 13), (13, 14), (14, 15), (15, 24)]
    outputs = [
        step(conv, longer[:, lo:hi]) if hi - lo <= 4 else conv(longer[:, lo:hi], decode=True) for lo, hi in pieces
    ]
    assert_close(jnp.concatenate(outputs, axis=1), conv(longer))
    conv.init_cache(3)  # a reset starts new sequences
    assert_close(conv(x[:, :5], decode=True), full[:, :5])


def test_linen_matches_nnx_and_decodes_with_its_cache():
    from flax import nnx

    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 10, 4)), jnp.float32)
    nnx_conv = jdw.nnx.CausalConv1D(4, 3, dilation=2, rngs=nnx.Rngs(0))
    params = nnx.state(nnx_conv, nnx.Param).to_pure_dict()
    layer = jdw.linen.CausalConv1D(3, dilation=2)
    assert_close(layer.apply({"params": params}, x), nnx_conv(x))
    decoder = jdw.linen.CausalConv1D(3, dilation=2, decode=True)
    cache = decoder.init(jax.random.key(0), x[:, :1])["cache"]
    assert cache["state"].shape == (2, 4, 4) and not np.any(cache["state"]) and cache["position"] == 0
    y, variables = decoder.apply({"params": params, "cache": cache}, x[:, :6], mutable=["cache"])
    outputs = [y]
    for t in range(6, 10):
        y, variables = decoder.apply({"params": params, **variables}, x[:, t : t + 1], mutable=["cache"])
        outputs.append(y)
    assert_close(jnp.concatenate(outputs, axis=1), nnx_conv(x))


def test_layer_misuse_is_named():
    from flax import nnx

    conv = jdw.nnx.CausalConv1D(4, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"needs a cache: call init_cache\(batch_size\) first"):
        conv(jnp.ones((1, 1, 4)), decode=True)
    with pytest.raises(ValueError, match=r"kernel_size=1 keeps no state"):
        jdw.nnx.CausalConv1D(4, 1, rngs=nnx.Rngs(0)).init_cache(2)
    conv.init_cache(2)
    with pytest.raises(ValueError, match=r"state must have shape \(1, 2, 4\) .* got \(2, 2, 4\)"):
        conv(jnp.ones((1, 1, 4)), decode=True)
