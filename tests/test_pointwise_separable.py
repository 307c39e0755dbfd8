"""jdw.pointwise_conv and jdw.separable_conv against NumPy."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from helpers import assert_close

import jdw


def test_pointwise_is_a_channel_contraction(rng):
    x = rng.standard_normal((2, 5, 4, 6)).astype(np.float32)
    k = rng.standard_normal((6, 9)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    expected = np.einsum("nhwc,cd->nhwd", x.astype(np.float64), k) + b
    assert_close(jdw.pointwise_conv(x, k, b), expected)
    # The Flax/Keras storage layout (1, 1, C_in, C_out) gives the same result.
    assert_close(jdw.pointwise_conv(x, k[None, None], b), expected)


def test_pointwise_channels_first_and_1d(rng):
    x = rng.standard_normal((2, 6, 7)).astype(np.float32)  # (N, C, W)
    k = rng.standard_normal((6, 3)).astype(np.float32)
    y = jdw.pointwise_conv(x, k, data_format="channels_first")
    assert_close(y, np.einsum("ncw,cd->ndw", x.astype(np.float64), k))


def test_pointwise_matches_flax_conv_1x1(rng):
    from flax import nnx

    conv = nnx.Conv(6, 9, kernel_size=(1, 1), rngs=nnx.Rngs(0))
    x = rng.standard_normal((2, 5, 4, 6)).astype(np.float32)
    assert_close(jdw.pointwise_conv(x, conv.kernel[...], conv.bias[...]), conv(x))


def test_pointwise_gradients(rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    k = rng.standard_normal((5, 2)).astype(np.float32)
    gx, gk = jax.grad(lambda x, k: jnp.sum(jdw.pointwise_conv(x, k) ** 2), argnums=(0, 1))(x, k)
    y = np.einsum("abc,cd->abd", x.astype(np.float64), k)
    assert_close(gx, np.einsum("abd,cd->abc", 2 * y, k))
    assert_close(gk, np.einsum("abc,abd->cd", x, 2 * y))


@pytest.mark.parametrize("strides,padding", [(1, "SAME"), (2, "VALID")])
def test_separable_is_depthwise_then_pointwise(implementation, rng, strides, padding):
    x = rng.standard_normal((2, 9, 8, 4)).astype(np.float32)
    dk = rng.standard_normal((3, 3, 1, 8)).astype(np.float32)
    db = rng.standard_normal(8).astype(np.float32)
    pk = rng.standard_normal((8, 5)).astype(np.float32)
    pb = rng.standard_normal(5).astype(np.float32)
    y = jdw.separable_conv(
        x, dk, pk, depthwise_bias=db, pointwise_bias=pb, strides=strides, padding=padding, implementation=implementation
    )
    pads = ref.explicit_padding(padding, (9, 8), (3, 3), (strides,) * 2, (1, 1))
    mid = ref.depthwise_conv(x, dk, db, strides=(strides,) * 2, padding=pads, dilation=(1, 1))
    assert_close(y, np.einsum("nhwc,cd->nhwd", mid, pk) + pb)


def test_separable_cost_matches_keras_parameter_count():
    """Keras SeparableConv2D(64, 3) on 32 channels has 3*3*32 + 32*64 + 64 = 2400 parameters."""
    dk, pk, pb = jnp.zeros((3, 3, 1, 32)), jnp.zeros((32, 64)), jnp.zeros(64)
    assert dk.size + pk.size + pb.size == 2400
    assert jdw.separable_conv(jnp.ones((1, 8, 8, 32)), dk, pk, pointwise_bias=pb).shape == (1, 8, 8, 64)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's layout choice")
def test_pointwise_kernel_gradient_transposes_no_activation_on_cpu():
    """The kernel gradient contracts over the flattened positions as they are stored: XLA:CPU writes no
    activation or cotangent transposed to ``[C, N*H*W]`` first (a fifth of a MobileNetV2 training step
    when the product contracted over N, H and W)."""
    x, kernel = jnp.ones((8, 16, 16, 32)), jnp.ones((32, 64))
    loss = lambda x, k: jnp.sum(jnp.sin(jdw.pointwise_conv(x, k)))  # noqa: E731
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
    assert "f32[2048,64]" in hlo  # the product over flattened positions
    assert "f32[64,2048]" not in hlo and "f32[32,2048]" not in hlo


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's product order")
@pytest.mark.parametrize("c_in,c_out", [(96, 16), (16, 96)])
def test_pointwise_kernel_gradient_takes_the_narrow_operand_first_on_cpu(rng, c_in, c_out):
    """Over many positions XLA:CPU's product is 2-3x faster with the fewer channels first: a
    projection's kernel gradient is the (C_out, C_in) product, transposed, and still right."""
    x = rng.standard_normal((4, 16, 16, c_in)).astype(np.float32)
    kernel = rng.standard_normal((c_in, c_out)).astype(np.float32)
    dy = rng.standard_normal((4, 16, 16, c_out)).astype(np.float32)
    loss = lambda x, k: jnp.sum(jdw.pointwise_conv(x, k) * dy)  # noqa: E731
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    hlo = grad.lower(x, kernel).compile().as_text()
    # The kernel gradient: the product over positions (both contracting dims 0), as it is stored
    # (its layout may put the second dimension first).
    (product,) = [line for line in hlo.splitlines() if " dot(" in line and "lhs_contracting_dims={0}" in line]
    rows, cols, minor = re.search(r"= f32\[(\d+),(\d+)\]\{(\d),\d\}", product).groups()
    stored = (rows, cols) if minor == "1" else (cols, rows)
    assert [int(d) for d in stored] == sorted((c_in, c_out)), product
    gx, gk = grad(x, kernel)
    assert_close(gx, np.einsum("nhwd,cd->nhwc", dy.astype(np.float64), kernel))
    assert_close(gk, np.einsum("nhwc,nhwd->cd", x.astype(np.float64), dy))
