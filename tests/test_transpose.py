"""jdw.depthwise_conv_transpose against the NumPy scatter reference, xla and its adjoint property."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from helpers import IMPLEMENTATIONS, assert_close
from jax.test_util import check_grads

import jdw

CASES = list(
    itertools.product(
        [1, 2, 3],  # strides
        ["SAME", "VALID", ((1, 0), (2, 1))],  # padding
        [1, 2],  # dilation
        [1, 2],  # multiplier
    )
)


def _expected(x, k, strides, padding, dilation, output_padding=0):
    nd = x.ndim - 2
    out = []
    pads = []
    for n, kk in zip(x.shape[1:-1], k.shape[:nd]):
        ke = (kk - 1) * dilation + 1
        if padding == "SAME":
            size = n * strides
            total = max(ke - strides, 0)  # the forward SAME padding of an input of that size
            pair = (total // 2, total - total // 2)
        elif padding == "VALID":
            size, pair = (n - 1) * strides + ke, (0, 0)
        else:
            pair = padding[len(out)]
            size = (n - 1) * strides + ke - sum(pair)
        out.append(size + output_padding)
        pads.append(pair)
    return ref.depthwise_conv_transpose(
        x, k, strides=(strides,) * nd, padding=pads, dilation=(dilation,) * nd, output_spatial=out
    )


@pytest.mark.parametrize("strides,padding,dilation,multiplier", CASES)
def test_against_reference(implementation, rng, strides, padding, dilation, multiplier):
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    k = rng.standard_normal((3, 2, 1, 3 * multiplier)).astype(np.float32)
    y = jdw.depthwise_conv_transpose(
        x, k, strides=strides, padding=padding, dilation=dilation, implementation=implementation
    )
    assert_close(y, _expected(x, k, strides, padding, dilation))


def test_output_padding(implementation, rng):
    x = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    k = rng.standard_normal((3, 3, 1, 2)).astype(np.float32)
    y = jdw.depthwise_conv_transpose(
        x, k, strides=3, padding=((1, 1), (1, 1)), output_padding=2, implementation=implementation
    )
    assert y.shape == (1, 12, 12, 2)  # (4 - 1) * 3 + 3 - 2 + 2
    assert_close(y, _expected(x, k, 3, ((1, 1), (1, 1)), 1, output_padding=2))


@pytest.mark.parametrize("strides,padding", [(1, "SAME"), (2, "SAME"), (2, ((1, 1), (0, 2))), (3, "VALID")])
def test_is_the_adjoint_of_depthwise_conv(implementation, rng, strides, padding):
    """<conv(x), y> == <x, conv_transpose(y)> for multiplier 1, with the same arguments."""
    k = rng.standard_normal((3, 3, 1, 4)).astype(np.float32)
    y = rng.standard_normal((2, 5, 4, 4)).astype(np.float32)
    xt = jdw.depthwise_conv_transpose(y, k, strides=strides, padding=padding, implementation=implementation)
    x = rng.standard_normal(xt.shape).astype(np.float32)
    forward = jdw.depthwise_conv(x, k, strides=strides, padding=padding, implementation=implementation)
    assert forward.shape == y.shape
    np.testing.assert_allclose(jnp.vdot(forward, y), jnp.vdot(x, xt), rtol=1e-4)


def test_gradients_match_xla(rng):
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 1, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    grads = {}
    for impl in IMPLEMENTATIONS:
        f = lambda x, k, b, impl=impl: jnp.sum(
            jnp.sin(jdw.depthwise_conv_transpose(x, k, b, strides=2, implementation=impl))
        )
        grads[impl] = jax.grad(f, argnums=(0, 1, 2))(x, k, b)
    for got, want in zip(grads["taps"], grads["xla"]):
        assert_close(got, want)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_second_order_gradients_float64(implementation):
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        x = jnp.asarray(rng.standard_normal((1, 3, 4, 2)))
        k = jnp.asarray(rng.standard_normal((3, 2, 1, 2)))
        f = lambda x, k: jdw.depthwise_conv_transpose(
            x, k, strides=(2, 1), padding="SAME", implementation=implementation
        )
        check_grads(f, (x, k), order=2, modes=["rev"])


def test_1d_and_channels_first(implementation, rng):
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)  # (N, C, W)
    k = rng.standard_normal((4, 1, 3)).astype(np.float32)
    y = jdw.depthwise_conv_transpose(
        x, k, strides=2, padding="VALID", data_format="channels_first", implementation=implementation
    )
    expected = _expected(np.moveaxis(x, 1, -1), k, 2, "VALID", 1)
    assert_close(np.moveaxis(np.asarray(y), 1, -1), expected)


@pytest.mark.parametrize("strides, padding, multiplier", [(2, "SAME", 1), ((1, 2, 1), "VALID", 2)])
def test_3d_against_reference(implementation, rng, strides, padding, multiplier):
    """3-D too on every backend (pallas: the VJP of its 3-D forward, a sum of 2-D kernel calls)."""
    x = rng.standard_normal((2, 3, 4, 5, 2)).astype(np.float32)
    k = rng.standard_normal((3, 2, 3, 1, 2 * multiplier)).astype(np.float32)
    y = jdw.depthwise_conv_transpose(x, k, strides=strides, padding=padding, implementation=implementation)
    want = jdw.depthwise_conv_transpose(x, k, strides=strides, padding=padding, implementation="xla")
    assert_close(y, want)
    if strides == 2:
        assert_close(y, _expected(x, k, 2, padding, 1))


def test_no_lhs_dilation_in_taps_program(rng):
    """The fast path never builds XLA's lhs-dilated grouped convolution."""
    x = jnp.ones((1, 8, 8, 4))
    k = jnp.ones((3, 3, 1, 4))
    f = lambda x, k: jdw.depthwise_conv_transpose(x, k, strides=2, implementation="taps")
    hlo = jax.jit(jax.grad(lambda x, k: jnp.sum(f(x, k)), argnums=(0, 1))).lower(x, k).compile().as_text()
    assert "convolution(" not in hlo


def test_same_on_a_length_off_the_stride_is_transposed_by_its_explicit_padding(rng):
    """The docstring's rule: SAME transposes to n * stride; the forward's explicit pads give the exact adjoint."""
    x = jnp.asarray(rng.standard_normal((1, 7, 2)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 1, 2)), jnp.float32)
    y, vjp = jax.vjp(lambda x: jdw.depthwise_conv(x, k, strides=2, padding="SAME"), x)
    ct = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    assert jdw.depthwise_conv_transpose(ct, k, strides=2, padding="SAME").shape == (1, 8, 2)
    assert_close(jdw.depthwise_conv_transpose(ct, k, strides=2, padding=((1, 1),)), vjp(ct)[0])
