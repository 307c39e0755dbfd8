"""jdw.depthwise_conv against the NumPy reference: forward and gradients, every backend."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from helpers import IMPLEMENTATIONS, assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jdw


def _case(rng, batch, spatial, channels, kernel_size, multiplier, dtype=np.float32):
    x = rng.standard_normal((batch, *spatial, channels)).astype(dtype)
    k = rng.standard_normal((*kernel_size, 1, channels * multiplier)).astype(dtype)
    return x, k


def _check(x, k, implementation, *, strides, padding, dilation, padding_mode="zeros", bias=None, grads=True):
    nd = x.ndim - 2
    strides_t = (strides,) * nd if isinstance(strides, int) else strides
    dilation_t = (dilation,) * nd if isinstance(dilation, int) else dilation
    pads = ref.explicit_padding(padding, x.shape[1:-1], k.shape[:nd], strides_t, dilation_t)
    opts = dict(strides=strides, padding=padding, dilation=dilation, padding_mode=padding_mode)
    y = jdw.depthwise_conv(x, k, bias, implementation=implementation, **opts)
    expected = ref.depthwise_conv(
        x, k, bias, strides=strides_t, padding=pads, dilation=dilation_t, padding_mode=padding_mode
    )
    assert_close(y, expected)
    if not grads:
        return
    dy = np.random.default_rng(1).standard_normal(expected.shape).astype(np.float32)
    args = (x, k) if bias is None else (x, k, bias)
    fn = lambda *a: jnp.vdot(jdw.depthwise_conv(*a, implementation=implementation, **opts), dy)
    got = jax.grad(fn, argnums=tuple(range(len(args))))(*args)
    want = ref.depthwise_conv_vjp(
        x, k, dy, strides=strides_t, padding=pads, dilation=dilation_t, padding_mode=padding_mode
    )
    for g, w in zip(got, want):
        assert_close(g, w)


def test_worked_example_28x28x3_valid(implementation, rng):
    """The concept: an RGB image, one 3x3 kernel per channel, VALID -> 26x26x3."""
    x = rng.standard_normal((1, 28, 28, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 1, 3)).astype(np.float32)
    y = jdw.depthwise_conv(x, k, padding="VALID", implementation=implementation)
    assert y.shape == (1, 26, 26, 3)
    # Channel c of the output only ever sees channel c of the input:
    expected = np.zeros((26, 26, 3))
    for c in range(3):
        for i, j in itertools.product(range(3), range(3)):
            expected[:, :, c] += x[0, i : i + 26, j : j + 26, c] * k[i, j, 0, c]
    assert_close(y[0], expected)


def test_closed_form_constants(implementation):
    """Ones in, kernel c filled with c + 1, bias 1: every interior output is 9 * (c + 1) + 1."""
    x = jnp.ones((2, 6, 6, 4))
    k = jnp.broadcast_to(jnp.arange(1.0, 5.0), (3, 3, 1, 4))
    y = jdw.depthwise_conv(x, k, jnp.ones(4), implementation=implementation)
    np.testing.assert_allclose(y[:, 1:-1, 1:-1], np.broadcast_to(9 * np.arange(1, 5) + 1, (2, 4, 4, 4)))
    np.testing.assert_allclose(y[:, 0, 0], np.broadcast_to(4 * np.arange(1, 5) + 1, (2, 4)))  # corner: 2x2 taps


GRID_2D = list(
    itertools.product(
        [1, 2],  # strides
        ["SAME", "VALID", ((1, 2), (2, 0))],  # padding
        [1, 2],  # dilation
        [1, 2],  # depth multiplier
    )
)


@pytest.mark.parametrize("strides,padding,dilation,multiplier", GRID_2D)
def test_grid_2d(implementation, rng, strides, padding, dilation, multiplier):
    x, k = _case(rng, 2, (9, 8), 3, (3, 3), multiplier)
    _check(x, k, implementation, strides=strides, padding=padding, dilation=dilation)


@pytest.mark.parametrize("kernel_size", [(1, 1), (2, 2), (5, 5), (3, 1), (1, 7)])
def test_kernel_sizes(implementation, rng, kernel_size):
    x, k = _case(rng, 2, (8, 9), 4, kernel_size, 1)
    _check(x, k, implementation, strides=1, padding="SAME", dilation=1)


@pytest.mark.parametrize("strides,padding,dilation", [(1, "SAME", 1), (2, "VALID", 1), (1, "CAUSAL", 2), (3, 2, 1)])
def test_1d(implementation, rng, strides, padding, dilation):
    x, k = _case(rng, 3, (13,), 5, (3,), 2)
    _check(x, k, implementation, strides=strides, padding=padding, dilation=dilation)


def test_causal_output_depends_only_on_the_past(implementation, rng):
    x, k = _case(rng, 1, (10,), 2, (4,), 1)
    y = jdw.depthwise_conv(x, k, padding="CAUSAL", implementation=implementation)
    x2 = x.copy()
    x2[:, 6:] += 1.0
    y2 = jdw.depthwise_conv(x2, k, padding="CAUSAL", implementation=implementation)
    np.testing.assert_array_equal(y[:, :6], y2[:, :6])
    assert not np.allclose(y[:, 6:], y2[:, 6:])


@pytest.mark.parametrize("strides,padding,dilation", [(1, "SAME", 1), ((2, 1, 2), "VALID", (1, 2, 1))])
def test_3d(implementation, rng, strides, padding, dilation):
    x, k = _case(rng, 2, (5, 6, 7), 2, (3, 2, 3), 2)
    _check(x, k, implementation, strides=strides, padding=padding, dilation=dilation)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("strides", [1, 2])
def test_padding_modes(implementation, rng, padding_mode, strides):
    x, k = _case(rng, 2, (7, 6), 3, (3, 3), 1)
    _check(x, k, implementation, strides=strides, padding=((2, 1), (1, 2)), dilation=1, padding_mode=padding_mode)


def test_bias_gradient(implementation, rng):
    x, k = _case(rng, 2, (6, 5), 3, (3, 3), 2)
    _check(x, k, implementation, strides=1, padding="SAME", dilation=1, bias=rng.standard_normal(6).astype(np.float32))


def test_large_padding_beyond_kernel(implementation, rng):
    x, k = _case(rng, 1, (4, 5), 2, (3, 3), 1)
    _check(x, k, implementation, strides=2, padding=((4, 5), (3, 6)), dilation=1)
    # Output rows of padding only, with channels in whole registers and rows of 20 (the CPU
    # backend's register blocks, which crashed here on a row that no input row reaches).
    x, k = _case(rng, 1, (5, 20), 32, (3, 3), 1)
    _check(x, k, implementation, strides=1, padding=((3, 4), (1, 1)), dilation=1)


def test_input_smaller_than_kernel_window(implementation, rng):
    """No output position sees only real input: every region is a border."""
    x, k = _case(rng, 2, (2, 3), 2, (5, 5), 1)
    _check(x, k, implementation, strides=1, padding="SAME", dilation=1)


def test_channels_first(implementation, rng):
    x, k = _case(rng, 2, (7, 7), 3, (3, 3), 2)
    y_last = jdw.depthwise_conv(x, k, strides=2, implementation=implementation)
    y_first = jdw.depthwise_conv(
        np.moveaxis(x, -1, 1), k, strides=2, data_format="channels_first", implementation=implementation
    )
    assert_close(np.moveaxis(np.asarray(y_first), 1, -1), y_last)


def test_unbatched_input(implementation, rng):
    x, k = _case(rng, 1, (7, 5), 3, (3, 3), 1)
    y = jdw.depthwise_conv(x[0], k, implementation=implementation)
    assert_close(y, jdw.depthwise_conv(x, k, implementation=implementation)[0])


@pytest.mark.parametrize("spatial", [(5,), (5, 5), (5, 5, 5)])
def test_empty_batch(implementation, rng, spatial):
    """A batch of zero images gives an empty output and zero-sized gradients, transposed convolution included."""
    nd = len(spatial)
    x, k = _case(rng, 0, spatial, 3, (3,) * nd, 2)
    bias = np.ones(6, np.float32)
    y = jdw.depthwise_conv(x, k, bias, strides=2, activation="relu6", implementation=implementation)
    assert y.shape == (0, *(3,) * nd, 6)
    gx, gk, gb = jax.grad(
        lambda *a: jnp.sum(jdw.depthwise_conv(*a, strides=2, implementation=implementation)), argnums=(0, 1, 2)
    )(x, k, bias)
    assert gx.shape == x.shape and not np.any(gk) and not np.any(gb) and gk.shape == k.shape
    t = jdw.depthwise_conv_transpose(x, k, strides=2, implementation=implementation)
    assert t.shape == (0, *(10,) * nd, 6)


def test_jit_and_vmap(implementation, rng):
    x, k = _case(rng, 2, (6, 6), 4, (3, 3), 1)
    f = jax.jit(lambda x, k: jdw.depthwise_conv(x, k, strides=2, implementation=implementation))
    expected = jdw.depthwise_conv(x, k, strides=2, implementation="xla")
    assert_close(f(x, k), expected)
    # vmap over a stack of kernels and over unbatched examples
    ks = np.stack([k, 2 * k])
    ys = jax.vmap(lambda k: jdw.depthwise_conv(x, k, strides=2, implementation=implementation))(ks)
    assert_close(ys[1], 2 * np.asarray(expected))
    ys = jax.vmap(lambda xi: jdw.depthwise_conv(xi, k, strides=2, implementation=implementation))(x)
    assert_close(ys, expected)


def test_grad_under_jit_and_vmap(implementation, rng):
    x, k = _case(rng, 3, (6, 5), 2, (3, 3), 1)
    loss = lambda k, x: jnp.sum(jdw.depthwise_conv(x, k, implementation=implementation) ** 2)
    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(k, x)
    whole = jax.grad(lambda k: jnp.sum(jdw.depthwise_conv(x, k, implementation="xla") ** 2))(k)
    assert_close(per_example.sum(0), whole)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_second_order_gradients_float64(implementation):
    """check_grads (numerical vs analytic) including second order, which exercises each custom VJP's VJP."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.standard_normal((2, 5, 6, 2)))
        k = jnp.asarray(rng.standard_normal((3, 3, 1, 4)))
        f = lambda x, k: jdw.depthwise_conv(
            x, k, strides=2, padding="SAME", dilation=(1, 2), implementation=implementation
        )
        check_grads(f, (x, k), order=2, modes=["rev"])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision(implementation, rng, dtype):
    x, k = _case(rng, 2, (9, 9), 8, (3, 3), 1)
    xd, kd = jnp.asarray(x, dtype), jnp.asarray(k, dtype)
    y = jdw.depthwise_conv(xd, kd, strides=2, implementation=implementation)
    assert y.dtype == jnp.dtype(dtype)
    pads = ref.explicit_padding("SAME", (9, 9), (3, 3), (2, 2), (1, 1))
    expected = ref.depthwise_conv(
        np.asarray(xd, np.float32), np.asarray(kd, np.float32), strides=(2, 2), padding=pads, dilation=(1, 1)
    )
    assert_close(y, expected, dtype=dtype)
    dk = jax.grad(
        lambda k: jnp.sum(jdw.depthwise_conv(xd, k, strides=2, implementation=implementation).astype(jnp.float32))
    )(kd)
    assert dk.dtype == jnp.dtype(dtype)
    _, dk_ref, _ = ref.depthwise_conv_vjp(
        np.asarray(xd, np.float32),
        np.asarray(kd, np.float32),
        np.ones(expected.shape),
        strides=(2, 2),
        padding=pads,
        dilation=(1, 1),
    )
    assert_close(dk, dk_ref, dtype=dtype)


def test_preferred_element_type(implementation, rng):
    x, k = _case(rng, 1, (5, 5), 2, (3, 3), 1)
    y = jdw.depthwise_conv(
        jnp.asarray(x, jnp.bfloat16),
        jnp.asarray(k, jnp.bfloat16),
        preferred_element_type=jnp.float32,
        implementation=implementation,
    )
    assert y.dtype == jnp.float32


def test_mixed_input_dtypes_promote(implementation, rng):
    x, k = _case(rng, 1, (5, 5), 2, (3, 3), 1)
    y = jdw.depthwise_conv(jnp.asarray(x, jnp.bfloat16), k, implementation=implementation)
    assert y.dtype == jnp.float32


@st.composite
def _random_case(draw):
    nd = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 7 if nd < 3 else 4)) for _ in range(nd))
    kernel_size = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    pads = []
    for n, k, d in zip(spatial, kernel_size, dilation):
        limit = n - 1 if mode == "reflect" else (n if mode == "circular" else 4)
        lo, hi = draw(st.integers(0, max(limit, 0))), draw(st.integers(0, max(limit, 0)))
        ke = (k - 1) * d + 1
        if n + lo + hi < ke:  # make the window fit
            if mode != "zeros":
                return None
            hi += ke - (n + lo + hi)
        pads.append((lo, hi))
    channels = draw(st.integers(1, 3))
    multiplier = draw(st.integers(1, 2))
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    return nd, spatial, kernel_size, strides, dilation, tuple(pads), mode, channels, multiplier, batch, seed


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(max_examples=15, deadline=None)
@given(case=_random_case())
def test_random_cases_against_reference(implementation, case):
    if case is None:
        return
    nd, spatial, kernel_size, strides, dilation, pads, mode, channels, multiplier, batch, seed = case
    x, k = _case(np.random.default_rng(seed), batch, spatial, channels, kernel_size, multiplier)
    _check(x, k, implementation, strides=strides, padding=pads, dilation=dilation, padding_mode=mode)


@pytest.mark.parametrize(
    "spatial, kernel_size, strides, pads",
    [
        ((1, 1, 1), (2, 1, 1), (3, 1, 1), ((3, 0), (0, 0), (0, 0))),  # found by hypothesis: an output of pure padding
        ((2, 5), (2, 3), (3, 2), ((4, 0), (1, 1))),
    ],
)
def test_gradient_where_an_output_reads_only_padding(implementation, spatial, kernel_size, strides, pads):
    """The input gradient's cotangent crop may exceed the dilated cotangent: it is zero there, not an error."""
    x, k = _case(np.random.default_rng(0), 1, spatial, 2, kernel_size, 1)
    _check(x, k, implementation, strides=strides, padding=pads, dilation=(1,) * len(spatial), padding_mode="zeros")
